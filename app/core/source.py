"""Version discovery: `VersionSource` keeps every model's aspired versions up to date.

It owns discovery for a set of models inside the lifespan's task group: a scan on start, then a
rescan on any watchfiles event, every `poll_seconds`, on `set_models`, and while a version is
still settling (or settling again after a change in place). Its methods run on the event-loop
thread; scans (`app.core.scanner.VersionScanner`, whose rules and safety contract apply) run in
the limiter. `ScanResult`, `VersionScanner` and `parse_version` are re-exported from here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import watchfiles

from app.core.scanner import ScanResult, VersionScanner, parse_version
from app.core.types import ModelConfig

__all__ = ["ScanResult", "VersionScanner", "VersionSource", "parse_version"]

logger = logging.getLogger(__name__)

_MIN_RESCAN_SECONDS = 0.05
_WATCH_TIMEOUT_MS = 500  # how soon a new watch reports itself live (see VersionSource._watch)


@dataclass(frozen=True, slots=True)
class _WatchTargets:
    recursive: frozenset[str] = frozenset()  # existing base paths (resolved)
    shallow: frozenset[str] = frozenset()  # nearest existing ancestor of each missing base path


def _watch_targets(configs: Sequence[ModelConfig]) -> _WatchTargets:
    """What to watch for `configs` right now (blocking: touches the filesystem)."""
    recursive: set[str] = set()
    shallow: set[str] = set()
    for config in configs:
        if "://" in config.base_path:  # an object-store URL (app.storage): nothing to watch
            continue
        path = Path(config.base_path).absolute()
        try:
            if path.is_dir():
                recursive.add(str(path.resolve()))
                continue
            while not path.is_dir() and path != path.parent:
                path = path.parent
            shallow.add(str(path.resolve()))
        except OSError as exc:  # e.g. a symlink loop; polling still covers it
            logger.warning("model %s: cannot watch %s: %s", config.name, path, exc)
    return _WatchTargets(frozenset(recursive), frozenset(shallow - recursive))


class VersionSource:
    """Owns discovery for a set of models. run() is a long-lived task the lifespan starts in its
    task group.

    Call every method from the event-loop thread. `on_scan` receives each model's result, one at a
    time, in config order; scans themselves run concurrently in `limiter`, off the loop.
    `poll_seconds` is TF Serving's --file_system_poll_wait_seconds: > 0 watch and poll, 0 scan once
    (and again on set_models), < 0 watch without polling. `file_events=False` never watches
    (filesystems without inotify: NFS, FUSE mounts), so only the poll finds new versions.
    """

    def __init__(
        self,
        scanner: VersionScanner,
        poll_seconds: float,
        limiter: anyio.CapacityLimiter,
        on_scan: Callable[[ScanResult], Awaitable[None]],
        *,
        file_events: bool = True,
    ) -> None:
        self._scanner = scanner
        self._poll_seconds = poll_seconds
        self._file_events = file_events
        self._limiter = limiter
        self._on_scan = on_scan
        self._models: tuple[ModelConfig, ...] = ()
        self._models_changed = False
        self._has_pending = False
        self._wake = anyio.Event()
        self._scan_lock = anyio.Lock()

    def set_models(self, configs: Sequence[ModelConfig]) -> None:
        """Replace the watched set (config reload); run() rescans and rebuilds its watches."""
        kept = {c.name for c in configs}
        for old in self._models:
            if old.name not in kept:
                self._scanner.forget(old.name)
        self._models = tuple(configs)
        self._models_changed = True
        self._wake.set()

    async def scan_all(self) -> list[ScanResult]:
        """One full scan of every model, then on_scan for each result (in config order).

        Exceptions from on_scan propagate. Concurrent calls are serialized.
        """
        async with self._scan_lock:
            models = self._models
            results: list[ScanResult] = [ScanResult(m.name) for m in models]

            async def scan_one(index: int, config: ModelConfig) -> None:
                results[index] = await anyio.to_thread.run_sync(
                    self._scanner.scan, config, limiter=self._limiter
                )

            async with anyio.create_task_group() as tg:
                for index, config in enumerate(models):
                    tg.start_soon(scan_one, index, config)
            self._has_pending = any(r.pending for r in results)  # revised versions included
            for result in results:
                await self._on_scan(result)
            return results

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Initial scan_all, then started(), then rescan on every trigger until cancelled."""
        self._models_changed = False  # the initial scan covers set_models calls made so far
        self._wake = anyio.Event()
        await self.scan_all()
        task_status.started()
        while True:
            targets = await self._targets()
            async with anyio.create_task_group() as tg:
                stop = anyio.Event()
                for paths, recursive in ((targets.recursive, True), (targets.shallow, False)):
                    if paths:
                        tg.start_soon(self._watch, paths, recursive, stop)
                try:
                    await self._rescan_until_rewatch(targets)
                finally:
                    stop.set()  # lets the watch threads return at their next step

    async def _rescan_until_rewatch(self, targets: _WatchTargets) -> None:
        """Rescan on each trigger; return when the watches must be rebuilt."""
        while True:
            with anyio.move_on_after(self._next_wait()):
                await self._wake.wait()
            self._wake = anyio.Event()  # events during the scan below cause another scan
            models_changed, self._models_changed = self._models_changed, False
            try:
                await self.scan_all()
            except Exception:
                logger.exception("version discovery pass failed; retrying on the next trigger")
            if models_changed or await self._targets() != targets:
                return

    def _next_wait(self) -> float:
        waits = [math.inf]
        if self._poll_seconds > 0:
            waits.append(self._poll_seconds)
        if self._has_pending:
            waits.append(max(self._scanner.settle_seconds, _MIN_RESCAN_SECONDS))
        return min(waits)

    async def _targets(self) -> _WatchTargets:
        if self._poll_seconds == 0 or not self._file_events:
            return _WatchTargets()
        return await anyio.to_thread.run_sync(_watch_targets, self._models, limiter=self._limiter)

    async def _watch(self, paths: frozenset[str], recursive: bool, stop: anyio.Event) -> None:
        """Turn filesystem events under `paths` into wake-ups until `stop` is set.

        The first (possibly empty) batch also wakes: the watch is live from then on, and a
        rescan covers whatever changed between the last scan and the watch starting.
        """
        live = False
        try:
            async for changes in watchfiles.awatch(
                *sorted(paths),
                watch_filter=None,
                stop_event=stop,
                recursive=recursive,
                debounce=400,
                rust_timeout=_WATCH_TIMEOUT_MS,
                yield_on_timeout=True,
                ignore_permission_denied=True,
            ):
                if changes or not live:
                    live = True
                    self._wake.set()
        except Exception as exc:  # e.g. inotify watch limit reached; polling still works
            logger.warning("cannot watch %s (%s); relying on polling", sorted(paths), exc)
