"""Version discovery: which complete version directories exist under each model's base path.

`VersionScanner.scan` lists one base path (blocking; call it from a worker thread) and returns a
`ScanResult`: integer-named child directories (leading zeros allowed; signed names, files,
`tmp`, `1.tmp`, `.hidden` ignored) that hold `saved_model.pb`/`.pbtxt`, the optional done
marker, and whose tree has not changed for `settle_seconds`. A version reported found once
stays found while its directory exists, so touching a loaded version never unloads it.

Safety contract: when `ScanResult.error` is set (the listing failed, or it holds no complete
version at all) `aspired` is empty and the caller must change nothing. A missing, unreadable or
emptied base path therefore never unloads a serving version.

`VersionSource` owns discovery for a set of models inside the lifespan's task group: a scan on
start, then a rescan on any watchfiles event, every `poll_seconds`, on `set_models`, and while
a version is still settling. Its methods run on the event-loop thread; scans run in the limiter.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import watchfiles

from app.core.layout import is_saved_model_dir
from app.core.types import ModelConfig

logger = logging.getLogger(__name__)

_VERSION_NAME = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1  # TF Serving parses version names as signed 64-bit integers
_MIN_RESCAN_SECONDS = 0.05
_WATCH_TIMEOUT_MS = 500  # how soon a new watch reports itself live (see VersionSource._watch)


def parse_version(name: str) -> int | None:
    """The version number a directory name denotes, or None when it is not a version name."""
    if not _VERSION_NAME.fullmatch(name):
        return None
    number = int(name)
    return number if number <= _MAX_VERSION else None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One listing of one model's base path (see the module docstring for the error contract)."""

    model: str
    found: dict[int, Path] = field(default_factory=dict)
    pending: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    aspired: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class _Fingerprint:
    files: int
    size: int
    newest_mtime: float


@dataclass(slots=True)
class _ModelState:
    """What one scanner remembers about one (model, base path) between scans."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    found: set[int] = field(default_factory=set)
    settling: dict[int, tuple[_Fingerprint, float]] = field(default_factory=dict)
    logged: set[str] = field(default_factory=set)
    problem: str | None = None


def _fingerprint(top: Path) -> _Fingerprint:
    """File count, total size and newest mtime (files and directories) of a tree.

    Symlinked files are followed; symlinked subdirectories are not descended (no cycles).
    """
    files = size = 0
    newest = 0.0
    for dirpath, _dirnames, filenames in os.walk(top):
        try:
            newest = max(newest, os.stat(dirpath).st_mtime)
        except OSError:
            continue
        for name in filenames:
            files += 1
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:  # vanished mid-walk: the count still records a change
                continue
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return _Fingerprint(files, size, newest)


class VersionScanner:
    """Lists base paths and decides which version directories are complete.

    Blocking; call `scan` from worker threads. Scans of different models may run concurrently;
    scans of one model are serialized. State (settling fingerprints, versions already found,
    problems already logged) is kept per (model name, base path).
    """

    def __init__(
        self,
        settle_seconds: float = 1.0,
        done_marker: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settle_seconds = max(settle_seconds, 0.0)
        self.done_marker = done_marker
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], _ModelState] = {}

    def forget(self, model: str) -> None:
        """Drop everything remembered about `model` (it left the config)."""
        with self._lock:
            for key in [k for k in self._states if k[0] == model]:
                del self._states[key]

    def scan(self, config: ModelConfig) -> ScanResult:
        """List `config.base_path` once. Never raises for filesystem problems."""
        with self._lock:
            state = self._states.setdefault((config.name, config.base_path), _ModelState())
        with state.lock:
            return self._scan(config, state)

    def _scan(self, config: ModelConfig, state: _ModelState) -> ScanResult:
        base = Path(config.base_path)
        try:
            candidates = self._list(config.name, base, state)
        except OSError as exc:
            failure = f"cannot list base path {base}: {exc.strerror or exc}"
            self._problem(state, config.name, logging.WARNING, failure + "; keeping what is loaded")
            return ScanResult(config.name, error=failure)
        found, pending = self._classify(config.name, state, candidates)
        self._forget_gone(config.name, state, set(candidates))
        error = self._empty_error(config.name, state, base, candidates, pending)
        if error is not None:
            return ScanResult(config.name, found, pending, error)
        if state.problem is not None:
            logger.info("model %s: versions found again under %s", config.name, base)
            state.problem = None
        aspired = frozenset(config.version_policy.select(set(found)))
        self._warn_missing_specific(config, state, found)
        return ScanResult(config.name, found, pending, None, aspired)

    def _classify(
        self, model: str, state: _ModelState, candidates: dict[int, Path]
    ) -> tuple[dict[int, Path], dict[int, str]]:
        """Split candidate versions into complete ones and pending ones (with the reason)."""
        found: dict[int, Path] = {}
        pending: dict[int, str] = {}
        for version, path in sorted(candidates.items()):
            try:
                reason = self._check(model, state, version, path)
            except OSError as exc:
                reason = f"unreadable ({exc.strerror or exc})"
            if reason is None:
                found[version] = path
                continue
            pending[version] = reason
            key = f"pending:{version}:{reason.split(' (')[0]}"
            msg = "model %s: version %d not ready: %s"
            self._once(state, key, msg, model, version, reason, level=logging.INFO)
        return found, pending

    def _list(self, model: str, base: Path, state: _ModelState) -> dict[int, Path]:
        """Integer-named child directories of `base`, one path per number. Raises OSError."""
        by_number: dict[int, list[str]] = {}
        with os.scandir(base) as entries:
            for entry in entries:
                number = parse_version(entry.name)
                if number is not None and entry.is_dir():  # is_dir follows symlinks
                    by_number.setdefault(number, []).append(entry.name)
        chosen: dict[int, Path] = {}
        for number, names in by_number.items():
            # Prefer the canonical spelling, then the smallest name, so the pick is stable.
            names.sort(key=lambda n: (n != str(number), n))
            chosen[number] = base / names[0]
            if len(names) > 1:
                self._once(
                    state,
                    f"dup:{number}:{names}",
                    "model %s: %s all name version %d; using %s",
                    model,
                    ", ".join(names),
                    number,
                    names[0],
                )
        return chosen

    def _check(self, model: str, state: _ModelState, version: int, path: Path) -> str | None:
        """None when `path` is a complete version, else why it is still pending."""
        if version in state.found:
            return None
        if not is_saved_model_dir(path):
            state.settling.pop(version, None)
            return "no saved_model.pb"
        if self.done_marker and not (path / self.done_marker).exists():
            state.settling.pop(version, None)
            return f"waiting for marker {self.done_marker}"
        now = self._clock()
        current = _fingerprint(path)
        previous = state.settling.get(version)
        since = previous[1] if previous is not None and previous[0] == current else now
        state.settling[version] = (current, since)
        # Quiet either by mtime (old versions are ready on the first scan) or by observation
        # (mtimes can lie: clock skew on NFS, tools that preserve timestamps while copying).
        quiet = max(now - current.newest_mtime, now - since)
        if quiet < self.settle_seconds:
            return f"settling (changed {max(quiet, 0.0):.1f}s ago)"
        del state.settling[version]
        state.found.add(version)
        logger.info("model %s: version %d is complete at %s", model, version, path)
        return None

    def _forget_gone(self, model: str, state: _ModelState, present: set[int]) -> None:
        for version in sorted(state.found - present):
            logger.info("model %s: version %d is no longer on disk", model, version)
            state.found.discard(version)
        for version in set(state.settling) - present:
            del state.settling[version]

    def _empty_error(
        self,
        model: str,
        state: _ModelState,
        base: Path,
        candidates: dict[int, Path],
        pending: dict[int, str],
    ) -> str | None:
        if not candidates:
            error = f"no versions found under {base}"
            self._problem(state, model, logging.ERROR, error + "; keeping what is loaded")
            return error
        if len(pending) == len(candidates):
            # Unloading the serving version while its successor is still being copied
            # would drop traffic, so "nothing complete yet" is treated like an empty listing.
            listing = ", ".join(f"{v}: {r}" for v, r in sorted(pending.items()))
            error = f"no complete version under {base} yet"
            self._problem(
                state, model, logging.WARNING, error + "; keeping what is loaded", listing
            )
            return f"{error} ({listing})"
        return None

    def _warn_missing_specific(
        self, config: ModelConfig, state: _ModelState, found: dict[int, Path]
    ) -> None:
        policy = config.version_policy
        missing = sorted(set(policy.versions) - set(found)) if policy.kind == "specific" else []
        if missing:
            msg = "model %s: specific versions %s not found under %s"
            self._once(state, f"missing:{missing}", msg, config.name, missing, config.base_path)

    def _problem(
        self, state: _ModelState, model: str, level: int, message: str, detail: str = ""
    ) -> None:
        """Log a listing problem loudly once, then quietly until it changes or clears."""
        full = f"{message} ({detail})" if detail else message
        quiet = state.problem == message
        state.problem = message
        logger.log(logging.DEBUG if quiet else level, "model %s: %s", model, full)

    def _once(
        self,
        state: _ModelState,
        key: str,
        message: str,
        *args: object,
        level: int = logging.WARNING,
    ) -> None:
        if key not in state.logged:
            state.logged.add(key)
            logger.log(level, message, *args)


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
            self._has_pending = any(r.pending for r in results)
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
