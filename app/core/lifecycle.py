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

Retries (TF Serving's LoaderHarness retries, cancelled by the AspiredVersionsManager once a
version is no longer aspired): a failed attempt is retried `max_num_load_retries` times,
`load_retry_interval_seconds` apart, but the back-off is a due time, never a sleep. While a
version waits, the reconciler serves every other input: a new aspired set is reconciled at once,
a version that leaves the aspired set stops retrying at once, the highest due version always loads
first (a good 10 never waits behind a retrying 9), and a version whose files change in place (a
new `ScanResult.generations` value) is tried again from scratch, even after it gave up. A load
already running in a worker thread cannot be interrupted; the reconciler looks again as soon as
it returns. A refusal by the signature policy (app.core.signatures) is deterministic: no retry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from app.core.overrides import NONE as NO_OVERRIDES
from app.core.overrides import Overrides
from app.core.priority import LoadPriority
from app.core.scanner import ScanResult
from app.core.servable import Loader
from app.core.signatures import IncompatibleVersion, refusal
from app.core.types import ModelConfig, ServableId, Signature, VersionState, VersionStatus
from app.core.versions import (
    LoadOptions,
    ModelVersion,
    ReleaseMemory,
    RunnerFactory,
    VersionWork,
)
from app.errors import HotserveError
from app.rollout.split import Split

__all__ = [
    "LoadOptions",
    "ModelRoute",
    "ModelState",
    "ModelVersion",
    "ReleaseMemory",
    "RunnerFactory",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRoute:
    """What requests for one model may reach."""

    versions: Mapping[int, ModelVersion]
    latest: ModelVersion | None
    labels: Mapping[str, int]
    # A rollout's weighted split of the default route, present only while both arms are
    # AVAILABLE and the canary's weight is above 0 (else `latest` is the stable arm, or the
    # canary while stable is not loaded: `Overrides.default`).
    split: Split[ModelVersion] | None = None


@dataclass
class _Attempts:
    """Load attempts of one version since it was (re)discovered: LoaderHarness's retry state."""

    generation: int  # ScanResult.generations value the attempts were made against
    count: int = 0
    retry_at: float = 0.0  # time.monotonic() when the next attempt is due
    gave_up: bool = False
    code: str = "OK"
    message: str = ""


class ModelState:
    """Lifecycle and routing state of one configured model.

    `statuses` holds only what this state did; `status_view()` adds what a previous state of the
    same model name (removed from the configuration, then added back) reports, as a copy.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        loader: Loader,
        runner_factory: RunnerFactory,
        load_limiter: anyio.CapacityLimiter,
        options: LoadOptions,
        publish: Callable[[], None],
        release_memory: ReleaseMemory,
        priority: LoadPriority,
        previous: ModelState | None = None,
        observe: Callable[[str, VersionStatus], None] | None = None,
    ) -> None:
        self.config = config
        self._options = options
        self._publish = publish
        self._work = VersionWork(
            loader=loader,
            runner_factory=runner_factory,
            limiter=load_limiter,
            options=options,
            release_memory=release_memory,
            priority=priority,
        )
        self.statuses: dict[int, VersionStatus] = {}
        self._previous = previous
        self._inherited: dict[int, VersionStatus] = {}
        self.loaded: dict[int, ModelVersion] = {}
        self._unloading: set[ModelVersion] = set()  # out of the routes, draining
        self._unloads: anyio.abc.TaskGroup | None = None  # run()'s, for background unloads
        self._attempts: dict[int, _Attempts] = {}
        self.active = True
        self._found: dict[int, Path] = {}
        self._generations: Mapping[int, int] = {}
        self._aspired: frozenset[int] | None = None  # None: no successful scan yet
        self._scanned: frozenset[int] | None = None  # the source's aspired set, before overrides
        self._scanned_raw: frozenset[int] = frozenset()  # as the source sent it (withdrawn kept)
        self.overrides = NO_OVERRIDES
        self._observe = observe
        self._labels: dict[str, int] = {}
        self._wake = anyio.Event()
        self._changed = anyio.Event()  # like _wake, for a version waiting in the publish gate
        self._caught_up = False  # another version than the gate's catch-up one was published
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
        self._generations = dict(result.generations)
        for v, attempts in list(self._attempts.items()):
            if v in self._found and self._generations.get(v, 0) != attempts.generation:
                log.info("model %s version %d: changed on disk; loading it again", self.name, v)
                del self._attempts[v]
        self._scanned_raw = result.aspired
        self._scanned = self._policy_pick(result.aspired)
        aspired = self.overrides.aspired(self._scanned) | self._catching_up()
        if self._aspired != aspired:
            log.info("model %s: aspired versions %s", self.name, sorted(aspired))
        self._aspired = aspired
        self._poke()

    def _policy_pick(self, scanned: frozenset[int]) -> frozenset[int]:
        """The source's aspired set with rolled-back versions (`Overrides.withdrawn`) taken out
        of the candidates before the version policy picks (`latest` then aspires the next
        highest version)."""
        withdrawn = self.overrides.withdrawn
        if not withdrawn or not (scanned & withdrawn):
            return scanned
        return frozenset(self.config.version_policy.select(set(self._found) - withdrawn))

    def _poke(self) -> None:
        self._wake.set()
        self._changed.set()

    def _catching_up(self) -> frozenset[int]:
        """With --workers, a restarted worker also aspires the version the other workers serve
        (`PublishGate.catch_up`) until the workers publish another one (which they all serve
        then: a newer one, or an older one after a rollback)."""
        gate = self._options.publish_gate
        version = gate.catch_up(self.name) if gate is not None else None
        if version is None or self._caught_up:
            return frozenset()
        return frozenset({version})

    @property
    def on_disk(self) -> frozenset[int]:
        """Complete versions the last successful scan found (loadable by an override)."""
        return frozenset(self._found)

    def override(self, overrides: Overrides) -> None:
        """The operator's input (app.core.overrides): applies to the routes now and to the
        aspired set as a scan result would; kept across later scans until replaced."""
        withdrawn_before = self.overrides.withdrawn
        self.overrides = overrides
        if self._scanned is not None and overrides.withdrawn != withdrawn_before:
            self._scanned = self._policy_pick(self._scanned_raw)  # as the next scan will
        if self._scanned is not None and self.active:
            self._aspired = overrides.aspired(self._scanned) | self._catching_up()
        self._publish()
        self._poke()

    def keeps_serving(self, overrides: Overrides) -> bool:
        """Whether some version would still serve with `overrides` in force, as the reconciler
        decides (`_unload_unaspired`): a loaded version stays aspired, or (unless
        resource-preserving) the loaded ones keep serving while an aspired one loads. An empty
        aspired set unloads everything. Before the first scan: whether anything is loaded."""
        if not self.loaded:
            return False
        if self._scanned is None or not self.active:
            return True
        aspired = overrides.aspired(self._scanned)
        if self.loaded.keys() & aspired:
            return True
        return bool(aspired) and not self._options.resource_preserving

    def update_config(self, config: ModelConfig) -> None:
        """Labels apply now; a changed version policy applies at the next scan."""
        self.config = config
        self._publish()
        self._poke()

    def retire(self) -> None:
        """Removed from the configuration: unload everything; statuses stay (as END)."""
        self.active = False
        self._aspired = frozenset()
        self._poke()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def failed(self) -> dict[int, str]:
        """Versions that gave up (END with an error), with the last error message."""
        return {v: a.message for v, a in self._attempts.items() if a.gave_up}

    def status_view(self) -> dict[int, VersionStatus]:
        """Every version this model name ever tracked: a fresh dict, safe to keep or change."""
        prev = self._previous
        if prev is not None and prev.stopped:  # it will not change any more: keep a copy only
            self._inherited, self._previous, prev = prev.status_view(), None, None
        base = prev.status_view() if prev is not None else self._inherited
        return {**base, **self.statuses}

    # ---- routing ------------------------------------------------------------------------

    def route(self) -> ModelRoute | None:
        if not self.active and not self.loaded:
            return None
        self._labels = self._effective_labels()
        latest = self.overrides.default(self.loaded)
        return ModelRoute(
            versions=dict(self.loaded),
            latest=latest,
            labels=dict(self._labels),
            split=self._split(),
        )

    def _split(self) -> Split[ModelVersion] | None:
        """The rollout's split of the default route, once both arms are AVAILABLE."""
        sp = self.overrides.split
        if sp is None or sp.weight <= 0.0 or sp.stable == sp.canary:
            return None
        stable, canary = self.loaded.get(sp.stable), self.loaded.get(sp.canary)
        if stable is None or canary is None:
            return None
        return Split(self.name, stable, canary, sp.weight)

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
        """Reconcile on every scan, config change or due retry; return once retired and empty.

        A replaced version drains and unloads in a task of its own (availability preserving), so
        a slow request still running on it never holds up the next load."""
        async with anyio.create_task_group() as unloads:
            self._unloads = unloads
            try:
                while True:
                    with anyio.move_on_after(self._next_retry_in()):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    try:
                        await self._reconcile()
                    except Exception:
                        log.exception("model %s: reconcile failed", self.name)
                    if not self.active and not self.loaded:
                        break
            finally:
                self._unloads = None
        self._publish()
        self._stopped.set()

    def _next_retry_in(self) -> float:
        """Seconds until the earliest retry of an aspired version is due (inf: none waits)."""
        due = [
            a.retry_at
            for v, a in self._attempts.items()
            if not a.gave_up and v in (self._aspired or ())
        ]
        return max(min(due) - time.monotonic(), 0.0) if due else math.inf

    async def _reconcile(self) -> None:
        aspired = self._aspired
        if aspired is None:
            return
        self._cancel_unaspired(aspired)
        if self._options.resource_preserving:
            await self._unload_unaspired(aspired)
        while (version := self._next_due()) is not None:
            await self._attempt(version, self._found[version])
            if self._wake.is_set():
                return  # newer input arrived during the load: run() reconciles again at once
        await self._unload_unaspired(self._aspired or frozenset())

    def _cancel_unaspired(self, aspired: frozenset[int], *, tell: bool = True) -> None:
        """Stop retrying versions that left the aspired set (a later re-publish starts over).
        With --workers the supervisor hears of it (`tell`), so no other worker waits for it."""
        gate = self._options.publish_gate
        for v in [v for v in self._attempts if v not in aspired]:
            a = self._attempts.pop(v)
            if not a.gave_up:
                log.info("model %s version %d: no longer aspired; retries cancelled", self.name, v)
                self._set(v, VersionState.END, a.code, f"{a.message} (retries cancelled)")
                if gate is not None and tell:
                    gate.failed(ServableId(self.name, v), "no longer aspired by a worker")

    def _next_due(self) -> int | None:
        """The highest aspired version that should load now, if any."""
        now = time.monotonic()
        for v in sorted((self._aspired or frozenset()) - self.loaded.keys(), reverse=True):
            a = self._attempts.get(v)
            if v in self._found and (a is None or (not a.gave_up and a.retry_at <= now)):
                return v
        return None

    async def _unload_unaspired(self, aspired: frozenset[int]) -> None:
        stale = sorted(self.loaded.keys() - aspired)
        if not stale:
            return
        serving_aspired = any(v in self.loaded for v in aspired)
        if aspired and not serving_aspired and not self._options.resource_preserving:
            log.info("model %s: keeping %s until an aspired version is available", self.name, stale)
            return
        for v in stale:
            if v in (self._aspired or ()):
                continue  # aspired again while an earlier one drained (an admin pin or load)
            mv = self._begin_unload(v)
            if self._unloads is None or self._options.resource_preserving:
                await self._finish_unload(mv)  # the next load needs its memory
            else:
                self._unloads.start_soon(self._finish_unload, mv)

    def _set(self, version: int, state: VersionState, code: str = "OK", msg: str = "") -> None:
        status = self.statuses[version] = VersionStatus(version, state, code, msg)
        if self._observe is not None:
            self._observe(self.config.name, status)

    async def _attempt(self, version: int, path: Path) -> None:
        """One load attempt of `version`; on failure schedule a retry or give up."""
        sid = ServableId(self.name, version)
        attempts = self._attempts.get(version)
        if attempts is None:
            attempts = self._attempts[version] = _Attempts(self._generations.get(version, 0))
            self._set(version, VersionState.START)
            self._set(version, VersionState.LOADING)
            log.info("model %s version %d: LOADING from %s", sid.name, version, path)
        started = time.monotonic()
        try:
            mv = await self._work.load(
                sid, path, lambda signatures: self._check_signatures(version, signatures)
            )
        except Exception as exc:  # any failure of a load must leave serving untouched
            self._failed(version, attempts, exc, started)
            return
        if not await self._admitted(mv, attempts):
            return
        if not self.active or version not in (self._aspired or ()):
            log.info("model %s version %d: no longer aspired after loading", sid.name, version)
            self._attempts.pop(version, None)
            await self._work.release(mv, drained=True)
            self._set(version, VersionState.END)
            return
        try:  # again, synchronously with the swap: clients may have called a signature meanwhile
            self._check_signatures(version, mv.signatures)
        except IncompatibleVersion as exc:
            await self._work.release(mv, drained=True)
            self._failed(version, attempts, exc, started)
            return
        self._attempts.pop(version, None)
        self._inherit_used(mv)
        gate = self._options.publish_gate
        if (
            gate is not None
            and not self._caught_up
            and gate.catch_up(self.name)
            not in (
                None,
                version,
            )
        ):
            self._caught_up = True  # the catch-up version is no longer aspired for its own sake
            if self._scanned is not None:
                self._aspired = self.overrides.aspired(self._scanned)
        self.loaded[version] = mv
        self._publish()
        if self._options.publish_gate is not None:
            self._options.publish_gate.published(sid)
        self._set(version, VersionState.AVAILABLE)
        log.info(
            "model %s version %d: AVAILABLE (load+warmup %.2fs)",
            sid.name,
            version,
            time.monotonic() - started,
        )

    def _failed(self, version: int, a: _Attempts, exc: Exception, started: float) -> None:
        a.count += 1
        a.code = exc.code if isinstance(exc, HotserveError) else "UNKNOWN"
        a.message = exc.message if isinstance(exc, HotserveError) else repr(exc)
        tries = self._options.max_num_load_retries + 1
        wanted = self.active and version in (self._aspired or ())
        if isinstance(exc, IncompatibleVersion) or a.count >= tries or not wanted:
            why = "refused" if isinstance(exc, IncompatibleVersion) else "load failed"
            log.error("model %s version %d: END, %s: %s", self.name, version, why, a.message)
            self._set(version, VersionState.END, a.code, a.message)
            a.gave_up = True
            if self._options.publish_gate is not None:
                self._options.publish_gate.failed(ServableId(self.name, version), a.message)
            if not wanted:  # a later re-publish starts over
                self._attempts.pop(version, None)
            return
        interval = max(self._options.load_retry_interval_seconds, 0.0)
        a.retry_at = time.monotonic() + interval
        log.warning(
            "model %s version %d: load attempt %d/%d failed after %.2fs: %s; retrying in %.1fs",
            self.name,
            version,
            a.count,
            tries,
            time.monotonic() - started,
            a.message,
            interval,
        )

    async def _admitted(self, mv: ModelVersion, a: _Attempts) -> bool:
        """With --workers, a version is routable only once every worker loaded it; one that
        some worker could not load is served by none (it ends here, not retried).

        The wait ends early when the version is superseded (no longer aspired, or a newer
        aspired version is due to load): the supervisor hears `failed`, so no worker waits for
        it any more, and this reconciler goes on to the newer version at once."""
        gate = self._options.publish_gate
        if gate is None:
            return True
        admitted: bool | None = None
        async with anyio.create_task_group() as tg:

            async def wait_gate() -> None:
                nonlocal admitted
                admitted = await gate.ready(mv.id)
                tg.cancel_scope.cancel()

            tg.start_soon(wait_gate)
            while not self._superseded(mv.id.version):
                await self._changed.wait()
                self._changed = anyio.Event()
            tg.cancel_scope.cancel()
        if admitted:
            return True
        if admitted is None:
            gate.failed(mv.id, "superseded while waiting for the other workers")
            await self._work.release(mv, drained=True)
            if self.active and mv.id.version in (self._aspired or ()):
                a.code, a.message, a.gave_up = "ABORTED", "superseded by a newer version", True
                self._set(mv.id.version, VersionState.END, a.code, a.message)
            else:
                self._attempts.pop(mv.id.version, None)
                self._set(mv.id.version, VersionState.END)
            log.info("model %s version %d: superseded while waiting", self.name, mv.id.version)
            return False
        a.code, a.message, a.gave_up = "ABORTED", "not loaded by every worker; served by none", True
        log.error("model %s version %d: END, %s", mv.id.name, mv.id.version, a.message)
        await self._work.release(mv, drained=True)
        self._set(mv.id.version, VersionState.END, a.code, a.message)
        return False

    def _superseded(self, version: int) -> bool:
        """`version` (loaded, waiting in the publish gate) should give way: no longer aspired,
        or a newer aspired version is due to load."""
        aspired = self._aspired or frozenset()
        if not self.active or version not in aspired:
            return True
        due = self._next_due()
        return due is not None and due > version

    def _replaces(self, version: int) -> ModelVersion | None:
        """The serving version `version` would take the default route from, if any. Versions
        served side by side below the latest (policy all/specific) replace nothing."""
        if not self.loaded:
            return None
        current = self.loaded[max(self.loaded)]
        return current if version > current.id.version else None

    def _check_signatures(self, version: int, signatures: Mapping[str, Signature]) -> None:
        current = self._replaces(version)
        if current is None:
            return
        why = refusal(
            self._options.signature_check,
            current.id.version,
            current.signatures,
            current.used,
            signatures,
        )
        if why is not None:
            raise IncompatibleVersion(why)

    def _inherit_used(self, mv: ModelVersion) -> None:
        """Clients of the version being replaced stay clients of its successor."""
        current = self._replaces(mv.id.version)
        if current is not None:
            mv.used.update(name for name in current.used if name in mv.signatures)

    def _begin_unload(self, version: int) -> ModelVersion:
        """Take `version` out of the routes now (UNLOADING); `_finish_unload` drains it."""
        mv = self.loaded.pop(version)
        self._unloading.add(mv)
        self._set(version, VersionState.UNLOADING)
        self._publish()
        if self._options.publish_gate is not None:
            self._options.publish_gate.withdrawn(mv.id)
        log.info("model %s version %d: UNLOADING (%d in flight)", mv.id.name, version, mv.refcount)
        return mv

    async def _finish_unload(self, mv: ModelVersion) -> None:
        started = time.monotonic()
        drained = await self._work.drain(mv)
        await self._work.release(mv, drained)
        if not drained and self._unloads is not None:
            # Its holders still run on the servable: unload it once the last one lets go, so
            # an abandoned drain still gives its memory back (tensorflow/serving#1664).
            self._unloads.start_soon(self._unload_when_idle, mv)
        self._unloading.discard(mv)
        version = mv.id.version
        if version not in self.loaded and version not in self._attempts:  # not loading anew
            self._set(version, VersionState.END)
        log.info(
            "model %s version %d: END (drain+unload %.2fs)",
            mv.id.name,
            version,
            time.monotonic() - started,
        )

    async def _unload_when_idle(self, mv: ModelVersion) -> None:
        while mv.refcount > 0:
            await mv.idle.wait()
        await self._work.release(mv, drained=True)  # runner and servable close idempotently
        log.info(
            "model %s version %d: unloaded after its last late request finished",
            mv.id.name,
            mv.id.version,
        )

    async def shutdown(self, timeout: float) -> None:
        """Unload everything, including versions whose background drain the cancellation of
        run() cut short (releasing twice is safe: runners and servables close idempotently)."""
        self.active = False
        self._aspired = frozenset()
        self._cancel_unaspired(frozenset(), tell=False)
        for v in sorted(self.loaded):
            self._begin_unload(v)
        for mv in sorted(self._unloading, key=lambda m: m.id.version):
            await self._finish_unload(mv)
