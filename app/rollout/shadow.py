"""The serving layer's rollout tap: per-arm request records and shadow (mirrored) traffic.

`RolloutTap` is what `app.serving.Serving.run` calls for a default-route request of a model that
has an active rollout (`models` holds their names; any other request costs one set lookup). For
each such request it:

- records the primary's latency (the model's share: batch queueing + model call) and outcome in
  the rollout's `Analysis` under its arm (stable or canary, by the version that served it);
- with probability `Rollout.shadow`, when the request was served by a version other than the
  canary, ALSO runs the same decoded inputs on the canary in a fire-and-forget task: the
  primary's answer is returned without waiting for it, the shadow's answer is never returned.
  The shadow holds its own lease on the canary version (`Registry.acquire`), so a swap or unload
  waits for it like for any request. Once both answered, the divergence
  (`app.rollout.divergence`) and the shadow's latency go to the analysis; a shadow error counts
  only when the primary answered the same inputs (a bad request fails on any version).

Budget (`ShadowBudget`): at most `max_in_flight` shadows per model; shadow rows in flight at most
`batch_share` of the canary's max_batch_size (when it batches); no new shadow while the
primary's runner has `busy_in_flight` or more requests in flight (overload: shadow work is
dropped first). A shadow over budget is dropped, never queued, and counted.

What counts as an error: whatever the runner raised (the model call failed, the queue was full,
the deadline passed) except cancellation (the client went away) and InvalidArgument. Input checks
run before the runner, so a malformed request is never recorded. A request the model itself
rejects (InvalidArgument: a tf.Example without a feature it parses, an Assert on the inputs) is
the client's fault on any version: stable's is not recorded, and a canary's is recorded as a
canary error only once stable answered the same inputs (`_check_on_stable`, a task within the
shadow budget): so one bad client request on a 5% canary cannot roll it back, while a canary
that rejects what stable answers still is.

Threading: all on the event-loop thread (the serving layer's thread); shadow tasks run in the
tap's own task group, started by the lifespan (`run`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import numpy as np

from app.core.registry import Lease, Registry
from app.core.types import Signature
from app.core.versions import ModelVersion
from app.errors import HotserveError, InvalidArgument
from app.rollout import divergence
from app.rollout.analysis import CANARY, STABLE, Analysis
from app.rollout.spec import Rollout
from app.serving.service import RunFn

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]

# A shadow with no client deadline still gives up after this long (seconds): a hung canary
# must not hold its lease (and budget) forever.
SHADOW_TIMEOUT_SECONDS = 30.0
OUTCOMES = ("ok", "error", "dropped", "primary_failed", "unavailable")


@dataclass(frozen=True, slots=True)
class ShadowBudget:
    """Limits on shadow work per model (flags --shadow_max_in_flight, --shadow_batch_share,
    --shadow_busy_in_flight)."""

    max_in_flight: int = 16
    batch_share: float = 0.5
    busy_in_flight: int = 64


@dataclass(slots=True)
class ModelTap:
    """One model's live rollout as the tap sees it, its analysis and shadow counters."""

    rollout: Rollout
    analysis: Analysis
    in_flight: int = 0
    rows_in_flight: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))


class _Primary:
    """The primary's answer, handed to its shadow task once known."""

    __slots__ = ("done", "outputs")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outputs: Outputs | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    """One mirrored request: what to run on the canary and where the primary's answer lands."""

    tap: ModelTap
    run: RunFn  # Serving's run: the runner call under the deadline, as for any request
    model: str
    sig: Signature  # the primary's; the canary's runner runs the signature of that name
    inputs: Outputs
    deadline: float | None
    primary: _Primary
    rows: int


class RolloutTap:
    """See the module docstring. `registry` returns the live registry."""

    def __init__(
        self, registry: Callable[[], Registry], budget: ShadowBudget | None = None
    ) -> None:
        self._registry = registry
        self.budget = budget or ShadowBudget()
        self.models: set[str] = set()  # read per request by Serving.run
        self.taps: dict[str, ModelTap] = {}
        # (model, outcome) -> mirrored requests since start (Prometheus counters: never reset)
        self.totals: dict[tuple[str, str], int] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._limiter = anyio.CapacityLimiter(1)  # big divergence comparisons, one at a time
        # Called (loop thread) with the model's name at every canary or shadow error: the
        # controller evaluates at once instead of at its next interval.
        self.on_canary_error: Callable[[str], None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The lifespan task that owns every shadow task; cancelled at shutdown."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    def reset(self) -> None:
        """Forget every model (a new registry: the lifespan's start, as the table resets)."""
        self.models.clear()
        self.taps.clear()

    def stop(self) -> None:
        """Shutdown began: no new shadows (running ones finish or are cancelled)."""
        self._tg = None

    # ---- what the controller sets --------------------------------------------------------

    def set(self, rollout: Rollout | None, model: str) -> ModelTap | None:
        """Track `rollout` for `model` (None or over: stop tracking). A rollout with another
        canary, stable or window starts a fresh analysis; a new weight or phase keeps it."""
        if rollout is None or rollout.phase.over:
            self.models.discard(model)
            self.taps.pop(model, None)
            return None
        tap = self.taps.get(model)
        old = tap.rollout if tap is not None else None
        if (
            tap is None
            or old is None
            or (old.stable, old.canary, old.window_seconds)
            != (rollout.stable, rollout.canary, rollout.window_seconds)
        ):
            tap = self.taps[model] = ModelTap(rollout, Analysis(rollout.window_seconds))
        tap.rollout = rollout
        self.models.add(model)
        return tap

    # ---- the request path (Serving.run) --------------------------------------------------

    async def run_primary(
        self,
        run: RunFn,
        mv: ModelVersion,
        sig: Signature,
        inputs: Outputs,
        deadline: float | None,
    ) -> Outputs:
        """Run the primary through `run`, record it, and maybe start its shadow."""
        tap = self.taps.get(mv.id.name)
        if tap is None:
            return await run(mv, sig, inputs, deadline)
        rollout = tap.rollout
        version = mv.id.version
        arm = CANARY if version == rollout.canary else STABLE if version == rollout.stable else ""
        primary: _Primary | None = None
        if arm == STABLE and rollout.shadow > 0 and random.random() < rollout.shadow:
            primary = self._start_shadow(tap, mv, sig, inputs, deadline, run=run)
        started = time.monotonic()
        ok = False
        try:
            out = await run(mv, sig, inputs, deadline)
            ok = True
            if primary is not None:
                primary.outputs = out
        except anyio.get_cancelled_exc_class():
            arm = ""  # the client went away: neither arm's fault
            raise
        except InvalidArgument:
            # The model rejected these inputs: on any version that is the client's fault, so it
            # is not recorded as is; a canary's counts only once stable answers the same inputs.
            if arm == CANARY:
                self._confirm_on_stable(tap, mv, sig, inputs, time.monotonic() - started)
            arm = ""
            raise
        finally:
            now = time.monotonic()
            if arm:
                tap.analysis.record(arm, now - started, ok, now)
                if not ok and arm == CANARY and self.on_canary_error is not None:
                    self.on_canary_error(mv.id.name)
            if primary is not None:
                primary.done.set()
        return out

    def _start_shadow(
        self,
        tap: ModelTap,
        mv: ModelVersion,
        sig: Signature,
        inputs: Outputs,
        deadline: float | None,
        *,
        run: RunFn,
    ) -> _Primary | None:
        tg = self._tg
        rows = _rows(inputs)
        if tg is None or not self._within_budget(tap, mv, rows):
            self._count(tap, "dropped")
            tap.analysis.drop_shadow()
            return None
        primary = _Primary()
        tap.in_flight += 1
        tap.rows_in_flight += rows
        tg.start_soon(
            self._shadow, _Job(tap, run, mv.id.name, sig, inputs, deadline, primary, rows)
        )
        return primary

    def _confirm_on_stable(
        self, tap: ModelTap, mv: ModelVersion, sig: Signature, inputs: Outputs, seconds: float
    ) -> None:
        """Start `_check_on_stable` within the shadow budget (over it: not counted at all)."""
        tg = self._tg
        if tg is None or tap.in_flight >= self.budget.max_in_flight:
            return
        tap.in_flight += 1
        tg.start_soon(self._check_on_stable, tap, mv.id.name, sig.name, inputs, seconds)

    async def _check_on_stable(
        self, tap: ModelTap, model: str, signature: str, inputs: Outputs, seconds: float
    ) -> None:
        """Run inputs the canary rejected (InvalidArgument) on stable: when stable answers them,
        the canary's rejection is the canary's fault and counts as a canary error."""
        answered = False
        try:
            lease = Lease(self._registry().resolve(model, tap.rollout.stable, None))
        except HotserveError:
            tap.in_flight -= 1
            return
        try:
            if signature in lease.version.signatures:
                deadline = time.monotonic() + SHADOW_TIMEOUT_SECONDS
                with anyio.move_on_after(SHADOW_TIMEOUT_SECONDS):
                    await lease.version.runner.submit(signature, inputs, deadline)
                    answered = True
        except Exception as exc:  # stable rejects them too: the client's fault
            log.debug("model %s: stable also rejected a canary's inputs: %s", model, exc)
        finally:
            lease.release()
            tap.in_flight -= 1
        if answered and tap is self.taps.get(model):
            tap.analysis.record(CANARY, seconds, False)
            if self.on_canary_error is not None:
                self.on_canary_error(model)

    def _count(self, tap: ModelTap, outcome: str) -> None:
        tap.outcomes[outcome] += 1
        key = (tap.rollout.model, outcome)
        self.totals[key] = self.totals.get(key, 0) + 1

    def _within_budget(self, tap: ModelTap, mv: ModelVersion, rows: int) -> bool:
        b = self.budget
        if tap.in_flight >= b.max_in_flight or mv.runner.in_flight >= b.busy_in_flight:
            return False
        canary = self._registry().snapshot.models.get(mv.id.name)
        target = canary.versions.get(tap.rollout.canary) if canary is not None else None
        if target is None:
            return True  # not loaded: the task counts it "unavailable"
        slots = getattr(target.runner, "max_batch_size", None)
        if isinstance(slots, int) and slots > 0:
            return tap.rows_in_flight + rows <= max(int(slots * b.batch_share), 1)
        return True

    async def _shadow(self, job: _Job) -> None:
        outcome = "error"
        try:
            outcome = await self._mirror(job)
        except Exception:  # a bug in shadow work must never reach the task group (the server)
            log.exception("shadow of model %s failed unexpectedly", job.model)
        finally:
            job.tap.in_flight -= 1
            job.tap.rows_in_flight -= job.rows
            self._count(job.tap, outcome)

    async def _mirror(self, job: _Job) -> str:
        tap, model = job.tap, job.model
        canary = tap.rollout.canary
        try:
            lease = Lease(self._registry().resolve(model, canary, None))
        except HotserveError:  # not loaded (yet / any more): nothing to compare
            return "unavailable"
        answer: Outputs | None = None
        started = time.monotonic()
        try:
            if job.sig.name in lease.version.signatures:
                deadline = started + SHADOW_TIMEOUT_SECONDS
                if job.deadline is not None:
                    deadline = min(deadline, job.deadline)
                answer = await job.run(lease.version, job.sig, job.inputs, deadline)
        except Exception as exc:  # the canary's failure (DeadlineExceeded too) is the measurement
            log.debug("shadow of %s on version %d failed: %s", model, canary, exc)
        finally:
            elapsed = time.monotonic() - started
            lease.release()
        await job.primary.done.wait()
        primary = job.primary.outputs
        if primary is None:
            return "primary_failed"
        if tap is not self.taps.get(model):
            return "ok" if answer is not None else "error"  # the rollout changed meanwhile
        if answer is None:
            tap.analysis.record_shadow(elapsed, None)
            if self.on_canary_error is not None:
                self.on_canary_error(model)
            return "error"
        d = await divergence.compare_async(primary, answer, self._limiter)
        tap.analysis.record_shadow(elapsed, d)
        return "ok"


def _rows(inputs: Outputs) -> int:
    for value in inputs.values():
        return int(value.shape[0]) if value.ndim else 1
    return 1
