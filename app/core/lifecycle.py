"""One model's version lifecycle: load, validate, warm up, swap, drain, unload.

`ModelState` is owned by the `Registry`. Its `run()` task is the model's only reconciler: it
serialises every load and unload of that model, so two swaps of one model never interleave, while
other models reconcile in parallel. All methods run on the event-loop thread; blocking work goes to
the load limiter.

Policies (TF Serving's, see spec 9.2):
- availability preserving (default): load the new version beside the old one, swap the route,
  then drain and unload the old one. Never unload the last serving version unless nothing is
  aspired at all.
- resource preserving: unload what is no longer aspired first, then load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread

from app.core.batcher import Runner
from app.core.overrides import NONE as NO_OVERRIDES
from app.core.overrides import Overrides
from app.core.priority import LoadPriority
from app.core.servable import Loader, Servable
from app.core.source import ScanResult
from app.core.types import (
    ModelConfig,
    ServableId,
    Signature,
    TensorSpec,
    VersionState,
    VersionStatus,
)
from app.errors import HotserveError, LoadError

log = logging.getLogger(__name__)


RunnerFactory = Callable[[ServableId, Servable, Path], Runner]


@dataclass(eq=False)
class ModelVersion:
    """One loaded version: its servable, its runner (batcher or direct) and its refcount."""

    id: ServableId
    path: Path
    servable: Servable
    runner: Runner
    signatures: Mapping[str, Signature]
    refcount: int = 0
    idle: anyio.Event = field(default_factory=anyio.Event)
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass(frozen=True)
class ModelRoute:
    """What requests for one model may reach."""

    versions: Mapping[int, ModelVersion]
    latest: ModelVersion | None
    labels: Mapping[str, int]


@dataclass(frozen=True)
class LoadOptions:
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    enable_warmup: bool = True
    warmup_iterations: int = 1
    synthetic_warmup: bool = False
    drain_timeout_seconds: float = 30.0
    resource_preserving: bool = False
    allow_incompatible_signatures: bool = False
    load_thread_nice: int = 5


def _changed(
    kind: str, old: Signature, theirs: dict[str, TensorSpec], ours: dict[str, TensorSpec]
) -> str | None:
    for alias, spec in theirs.items():
        got = ours.get(alias)
        if got is None:
            return f"signature {old.name!r} lost {kind} {alias!r}"
        if got.dtype != spec.dtype:
            return (
                f"signature {old.name!r} {kind} {alias!r} changed dtype {spec.dtype} -> {got.dtype}"
            )
    return None


def incompatibility(old: Signature, new: Signature | None) -> str | None:
    """Why `new` cannot replace `old` for existing clients, or None when it can."""
    if new is None:
        return f"signature {old.name!r} is missing"
    why = _changed("input", old, old.inputs, new.inputs)
    if why is not None:
        return why
    added = sorted(set(new.inputs) - set(old.inputs))
    if added:
        return f"signature {old.name!r} requires new inputs {added}"
    return _changed("output", old, old.outputs, new.outputs)


class ModelState:
    """Lifecycle and routing state of one configured model."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        loader: Loader,
        runner_factory: RunnerFactory,
        load_limiter: anyio.CapacityLimiter,
        options: LoadOptions,
        publish: Callable[[], None],
        release_memory: Callable[[], None],
        priority: LoadPriority,
        statuses: dict[int, VersionStatus] | None = None,
        observe: Callable[[str, VersionStatus], None] | None = None,
    ) -> None:
        self.config = config
        self._loader = loader
        self._runner_factory = runner_factory
        self._limiter = load_limiter
        self._options = options
        self._publish = publish
        self._release_memory = release_memory
        self._priority = priority
        self.statuses: dict[int, VersionStatus] = statuses if statuses is not None else {}
        self.loaded: dict[int, ModelVersion] = {}
        self.failed: dict[int, str] = {}
        self.active = True
        self._found: dict[int, Path] = {}
        self._aspired: frozenset[int] | None = None  # None: no successful scan yet
        self._scanned: frozenset[int] | None = None  # the source's aspired set, before overrides
        self.overrides = NO_OVERRIDES
        self._observe = observe
        self._labels: dict[str, int] = {}
        self._wake = anyio.Event()
        self._stopped = anyio.Event()

    # ---- inputs ------------------------------------------------------------------------

    def offer(self, result: ScanResult) -> None:
        if result.error is not None:
            if self.loaded:
                log.error(
                    "model %s: %s; keeping versions %s serving",
                    self.config.name,
                    result.error,
                    sorted(self.loaded),
                )
            return
        self._found = dict(result.found)
        self._scanned = result.aspired
        aspired = self.overrides.aspired(result.aspired)
        if self._aspired != aspired:
            log.info("model %s: aspired versions %s", self.config.name, sorted(aspired))
        self._aspired = aspired
        self._wake.set()

    @property
    def on_disk(self) -> frozenset[int]:
        """Complete versions the last successful scan found (loadable by an override)."""
        return frozenset(self._found)

    def override(self, overrides: Overrides) -> None:
        """The operator's input (app.core.overrides): applies to the routes now and to the
        aspired set as a scan result would; kept across later scans until replaced."""
        self.overrides = overrides
        if self._scanned is not None and self.active:
            self._aspired = overrides.aspired(self._scanned)
        self._publish()
        self._wake.set()

    def update_config(self, config: ModelConfig) -> None:
        """Labels apply now; a changed version policy applies at the next scan."""
        self.config = config
        self._publish()
        self._wake.set()

    def retire(self) -> None:
        """Removed from the configuration: unload everything; statuses stay (as END)."""
        self.active = False
        self._aspired = frozenset()
        self._wake.set()

    # ---- routing ------------------------------------------------------------------------

    def route(self) -> ModelRoute | None:
        if not self.active and not self.loaded:
            return None
        self._labels = self._effective_labels()
        latest = self.overrides.default(self.loaded)
        return ModelRoute(versions=dict(self.loaded), latest=latest, labels=dict(self._labels))

    def _effective_labels(self) -> dict[str, int]:
        """A new label may point at a version that is not loaded yet (it answers once it is);
        an existing label only moves once its new target is AVAILABLE."""
        labels: dict[str, int] = {}
        for label, target in self.overrides.apply_labels(self.config.version_labels).items():
            previous = self._labels.get(label)
            if target in self.loaded or previous is None or previous not in self.loaded:
                labels[label] = target
            else:
                labels[label] = previous
        return labels

    def settled(self) -> bool:
        if self.loaded:
            return True
        if self._aspired is None:
            return False
        return all(
            self.statuses.get(v, VersionStatus(v, VersionState.START)).state == VersionState.END
            for v in self._aspired
        ) and bool(self._aspired)

    def readiness(self) -> str:
        if self.loaded:
            return f"AVAILABLE {sorted(self.loaded)}"
        if self._aspired is None:
            return "waiting for a first complete version"
        return "LOADING" if not self.settled() else "FAILED"

    # ---- the reconciler -----------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile whenever a scan or config change wakes us; return once retired and empty."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._reconcile()
            except Exception:
                log.exception("model %s: reconcile failed", self.config.name)
            if not self.active and not self.loaded:
                self._publish()
                self._stopped.set()
                return

    async def _reconcile(self) -> None:
        aspired = self._aspired
        if aspired is None:
            return
        for v in [v for v in self.failed if v not in aspired]:
            del self.failed[v]  # re-publishing a removed version later retries it
        to_load = sorted(aspired - self.loaded.keys() - self.failed.keys(), reverse=True)
        if self._options.resource_preserving:
            await self._unload_unaspired(aspired)
        for v in to_load:
            if v in self._found and v in (self._aspired or ()):
                await self._load(v, self._found[v])
        await self._unload_unaspired(self._aspired or frozenset())

    async def _unload_unaspired(self, aspired: frozenset[int]) -> None:
        stale = sorted(self.loaded.keys() - aspired)
        if not stale:
            return
        serving_aspired = any(v in self.loaded for v in aspired)
        if aspired and not serving_aspired and not self._options.resource_preserving:
            log.info(
                "model %s: keeping %s until an aspired version is available",
                self.config.name,
                stale,
            )
            return
        for v in stale:
            if v in (self._aspired or ()):
                continue  # aspired again while an earlier one drained (an admin pin or load)
            await self._unload(v)

    def _set(self, version: int, state: VersionState, code: str = "OK", msg: str = "") -> None:
        status = self.statuses[version] = VersionStatus(version, state, code, msg)
        if self._observe is not None:
            self._observe(self.config.name, status)

    async def _load(self, version: int, path: Path) -> None:
        sid = ServableId(self.config.name, version)
        self._set(version, VersionState.START)
        self._set(version, VersionState.LOADING)
        log.info("model %s version %d: LOADING from %s", sid.name, version, path)
        tries = self._options.max_num_load_retries + 1
        for attempt in range(1, tries + 1):
            started = time.monotonic()
            try:
                mv = await self._load_once(sid, path)
            except Exception as exc:  # any failure of a load must leave serving untouched
                code = exc.code if isinstance(exc, HotserveError) else "UNKNOWN"
                msg = exc.message if isinstance(exc, HotserveError) else repr(exc)
                still_wanted = self.active and version in (self._aspired or ())
                if attempt < tries and still_wanted:
                    log.warning(
                        "model %s version %d: load attempt %d/%d failed after %.2fs: %s; "
                        "retrying in %.1fs",
                        sid.name,
                        version,
                        attempt,
                        tries,
                        time.monotonic() - started,
                        msg,
                        self._options.load_retry_interval_seconds,
                    )
                    await anyio.sleep(max(self._options.load_retry_interval_seconds, 0.0))
                    continue
                log.error("model %s version %d: END, load failed: %s", sid.name, version, msg)
                self._set(version, VersionState.END, code, msg)
                self.failed[version] = msg
                return
            if not self.active or version not in (self._aspired or ()):
                log.info("model %s version %d: no longer aspired after loading", sid.name, version)
                await self._release(mv, drained=True)
                self._set(version, VersionState.END)
                return
            self.loaded[version] = mv
            self._publish()
            self._set(version, VersionState.AVAILABLE)
            log.info(
                "model %s version %d: AVAILABLE (load+warmup %.2fs)",
                sid.name,
                version,
                time.monotonic() - started,
            )
            return

    async def _load_once(self, sid: ServableId, path: Path) -> ModelVersion:
        servable = await to_thread.run_sync(
            self._priority.call, self._loader.load, path, limiter=self._limiter
        )
        try:
            self._check_compatible(sid.version, servable)
            records = await self._warm(servable)
            runner = self._runner_factory(sid, servable, path)
        except BaseException:
            await to_thread.run_sync(servable.unload, limiter=self._limiter)
            raise
        log.info("model %s version %d: warmed up with %d records", sid.name, sid.version, records)
        return ModelVersion(
            id=sid,
            path=path,
            servable=servable,
            runner=runner,
            signatures=dict(servable.signatures),
        )

    def _check_compatible(self, version: int, servable: Servable) -> None:
        """Only a version that takes over the default route replaces one; versions served side
        by side (policy all/specific, below the latest) are independent."""
        if self._options.allow_incompatible_signatures or not self.loaded:
            return
        current = self.loaded[max(self.loaded)]
        if version < current.id.version:
            return
        for name, old in current.signatures.items():
            if not old.inputs:
                continue
            why = incompatibility(old, servable.signatures.get(name))
            if why is not None:
                raise LoadError(
                    f"incompatible with serving version {current.id.version}: {why} "
                    "(set allow_incompatible_signatures to replace it anyway)",
                    "FAILED_PRECONDITION",
                )

    async def _warm(self, servable: Servable) -> int:
        if not self._options.enable_warmup:
            return 0
        n = await to_thread.run_sync(
            self._priority.call,
            servable.warmup,
            self._options.warmup_iterations,
            limiter=self._limiter,
        )
        if n == 0 and self._options.synthetic_warmup:
            synthetic = getattr(servable, "synthetic_warmup", None)
            if synthetic is not None:
                n = int(
                    await to_thread.run_sync(self._priority.call, synthetic, limiter=self._limiter)
                )
        return int(n)

    async def _unload(self, version: int) -> None:
        mv = self.loaded.pop(version)
        self._set(version, VersionState.UNLOADING)
        self._publish()
        log.info("model %s version %d: UNLOADING (%d in flight)", mv.id.name, version, mv.refcount)
        started = time.monotonic()
        drained = await self._drain(mv)
        await self._release(mv, drained)
        self._set(version, VersionState.END)
        log.info(
            "model %s version %d: END (drain+unload %.2fs)",
            mv.id.name,
            version,
            time.monotonic() - started,
        )

    async def _drain(self, mv: ModelVersion) -> bool:
        with anyio.move_on_after(self._options.drain_timeout_seconds):
            while mv.refcount > 0:
                await mv.idle.wait()
        if mv.refcount > 0:
            log.warning(
                "model %s version %d: gave up waiting for %d in-flight requests after %.1fs; "
                "it is released when they finish",
                mv.id.name,
                mv.id.version,
                mv.refcount,
                self._options.drain_timeout_seconds,
            )
            return False
        return True

    async def _release(self, mv: ModelVersion, drained: bool) -> None:
        await mv.runner.close(timeout=self._options.drain_timeout_seconds)
        if drained:
            await to_thread.run_sync(mv.servable.unload, limiter=self._limiter)
        mv.cache.clear()
        await to_thread.run_sync(self._release_memory, limiter=self._limiter)

    async def shutdown(self, timeout: float) -> None:
        self.active = False
        self._aspired = frozenset()
        for v in sorted(self.loaded):
            await self._unload(v)
