"""The rollout controller: analysis drives automatic rollouts step by step (issue 11).

A task in the lifespan's task group (`run`). About once a second (`interval`), for every model
whose rollout is active, automatic and not paused, it takes the analysis window
(`app.rollout.shadow.RolloutTap` records it on the request path) and judges it
(`app.rollout.analysis.verdict` against the rollout's `Thresholds`):

- UNHEALTHY: roll back at once, with the reason (`RolloutTable.rollback`);
- HEALTHY, and `step_seconds` spent at the current weight: the next step — from SHADOW to the
  first step, then through `steps` (5 -> 25 -> 50 -> 100 %), and from 100 % to PROMOTED;
- NO_VERDICT: wait for samples.
The table's verbs log each change, record it in the rollout events (admin API, status page) and
call the listeners; the controller adds the decision counters (`hotserve_rollout_decisions_total`
and friends, `RolloutMetrics`) and a log line with the numbers it acted on.

It also follows the table (a listener) to keep the tap in step: a new or changed rollout is
tracked, a finished one is dropped; a weight change restarts the step clock.

Threading: everything on the event-loop thread; `tick` is synchronous and cheap (one window
summary per active rollout), so it never holds the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio
import anyio.abc

from app.errors import HotserveError
from app.rollout.analysis import Judgement, Verdict, verdict
from app.rollout.metrics import RolloutMetrics
from app.rollout.shadow import RolloutTap
from app.rollout.spec import Phase, Policy, Rollout

log = logging.getLogger(__name__)

DECISIONS = ("step", "promote", "rollback", "enter")


class Table(Protocol):
    """What the controller uses of `app.rollout.table.RolloutTable`."""

    @property
    def rollouts(self) -> Mapping[str, Rollout]: ...

    @property
    def policies(self) -> Mapping[str, Policy]: ...

    def add_listener(
        self, listener: Callable[[str, Rollout | None, Rollout | None], None]
    ) -> None: ...

    def start(self, rollout: Rollout, source: str = ...) -> Rollout: ...

    def set_weight(
        self, model: str, weight: float, reason: str = ..., source: str = ...
    ) -> Rollout: ...

    def promote(self, model: str, reason: str = ..., source: str = ...) -> Rollout: ...

    def rollback(self, model: str, reason: str, source: str = ...) -> Rollout: ...


class RolloutController:
    """See the module docstring. `interval`: seconds between evaluations."""

    def __init__(
        self,
        table: Table,
        tap: RolloutTap,
        metrics: RolloutMetrics | None = None,
        interval: float = 1.0,
    ) -> None:
        self.table = table
        self.tap = tap
        self.metrics = metrics or RolloutMetrics(lambda: table.rollouts, tap)
        self.interval = interval
        self._since: dict[str, float] = {}  # model -> time.monotonic() the current step began
        self.judgements: dict[str, Judgement] = {}  # the last verdict per model (status page)
        table.add_listener(self._changed)
        for model, rollout in table.rollouts.items():
            self._changed(model, None, rollout)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Evaluate every `interval` seconds until cancelled (lifespan shutdown)."""
        task_status.started()
        while True:
            await anyio.sleep(self.interval)
            try:
                self.tick()
            except Exception:  # a bug here must not end automatic rollback for every model
                log.exception("rollout controller: evaluation failed")

    # ---- following the table -------------------------------------------------------------

    def _changed(self, model: str, old: Rollout | None, new: Rollout | None) -> None:
        self.tap.set(new, model)
        if new is None or new.phase.over:
            self._since.pop(model, None)
            self.judgements.pop(model, None)
            return
        if old is None or (old.weight, old.phase, old.canary) != (
            new.weight,
            new.phase,
            new.canary,
        ):
            self._since[model] = time.monotonic()

    # ---- deciding ------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """One evaluation of every active automatic rollout (loop thread)."""
        now = time.monotonic() if now is None else now
        for model, rollout in list(self.table.rollouts.items()):
            if rollout.phase.over or rollout.phase is Phase.PAUSED:
                continue
            tap = self.tap.taps.get(model)
            if tap is None:
                continue
            snap = tap.analysis.snapshot(now)
            judged = verdict(snap, rollout.thresholds, rollout.phase)
            self.judgements[model] = judged
            if not rollout.automatic:
                continue
            try:
                self._act(model, rollout, judged, now, snap.as_dict())
            except HotserveError as exc:  # e.g. the canary is not AVAILABLE to promote yet
                log.warning("rollout of model %s: %s deferred: %s", model, judged.verdict, exc)

    def _act(
        self, model: str, r: Rollout, judged: Judgement, now: float, numbers: dict[str, Any]
    ) -> None:
        if judged.verdict is Verdict.UNHEALTHY:
            log.warning("rollout of model %s: rolling back: %s (%s)", model, judged.reason, numbers)
            self.table.rollback(model, f"automatic: {judged.reason}", source="controller")
            self.metrics.decided(model, "rollback")
            return
        if judged.verdict is not Verdict.HEALTHY:
            return
        if now - self._since.get(model, now) < r.step_seconds:
            return
        following = next_step(r)
        if following is None:
            log.info("rollout of model %s: promoting (%s)", model, numbers)
            reason = f"automatic: healthy at {r.weight:.0%} for {r.step_seconds:g}s"
            self.table.promote(model, reason, source="controller")
            self.metrics.decided(model, "promote")
            return
        where = "shadow" if r.phase is Phase.SHADOW else f"{r.weight:.0%}"
        reason = f"automatic: healthy at {where} for {r.step_seconds:g}s"
        log.info("rollout of model %s: step to %.0f%% (%s)", model, following * 100, numbers)
        self.table.set_weight(model, following, reason, source="controller")
        self.metrics.decided(model, "step")

    # ---- reading -------------------------------------------------------------------------

    def status(self, model: str) -> dict[str, Any] | None:
        """The analysis numbers and the last verdict of the model's rollout (status page)."""
        tap = self.tap.taps.get(model)
        if tap is None:
            return None
        judged = self.judgements.get(model)
        return {
            "window": tap.analysis.snapshot().as_dict(),
            "verdict": judged.verdict.value if judged is not None else Verdict.NO_VERDICT.value,
            "verdict_reason": judged.reason if judged is not None else "",
            "shadow_outcomes": dict(tap.outcomes),
        }


def next_step(r: Rollout) -> float | None:
    """The weight after the current one (SHADOW: the first step), None when the canary has the
    whole route (time to promote)."""
    if r.phase is Phase.SHADOW:
        return r.steps[0] if r.steps else 1.0
    if r.weight >= 1.0:
        return None
    return next((s for s in r.steps if s > r.weight), 1.0)
