"""The rollout controller: analysis drives automatic rollouts step by step (issue 11).

A task in the lifespan's task group (`run`). About once a second (`interval`), and at once
when the tap reports a canary or shadow error (at most every `MIN_GAP_SECONDS`), for every model
whose rollout is active, it takes the analysis window
(`app.rollout.shadow.RolloutTap` records it on the request path) and judges it
(`app.rollout.analysis.verdict` against the rollout's `Thresholds`):

- UNHEALTHY: roll back at once, with the reason (`RolloutTable.rollback`);
- HEALTHY, and `step_seconds` spent at the current weight: the next step — from SHADOW to the
  first step, then through `steps` (5 -> 25 -> 50 -> 100 %), and from 100 % to PROMOTED;
- NO_VERDICT: wait for samples.
Manual (`automatic: false`) and PAUSED rollouts are judged the same way (the verdict is shown on
the status page) but never acted on.
The table's verbs log each change, record it in the rollout events (admin API, status page) and
call the listeners; the controller adds the decision counters (`hotserve_rollout_decisions_total`
and friends, `RolloutMetrics`) and a log line with the numbers it acted on.

Auto-enter (`Policy.on_publish` "rollout" | "shadow", opt-in per model): `version_state`, the
registry's state observer, sees a newer version start LOADING and the controller starts a
rollout from the policy's template with the version serving now as stable (`enter`), before the
new version can be AVAILABLE. This relies on the default availability-preserving load policy
(new version loaded beside the old); under `--load_policy=resource_preserving` the old version
is unloaded before the new one loads, so there is no stable left to hold and `enter` declines.

It also follows the table (a listener) to keep the tap in step: a new or changed rollout is
tracked, a finished one is dropped; a weight change restarts the step clock.

Threading: everything on the event-loop thread; `tick` is synchronous and cheap (one window
summary per active rollout), so it never holds the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from app.core.registry import Registry
from app.core.types import VersionState, VersionStatus
from app.errors import HotserveError
from app.rollout.analysis import Judgement, Verdict, verdict
from app.rollout.metrics import RolloutMetrics
from app.rollout.shadow import RolloutTap
from app.rollout.spec import Phase, Policy, Rollout
from app.rollout.table import RolloutTable

log = logging.getLogger(__name__)

DECISIONS = ("step", "promote", "rollback", "enter")
# Evaluations woken by canary errors come at most this often (seconds): a failing canary's
# error burst costs ~20 window summaries a second, not one per error.
MIN_GAP_SECONDS = 0.05


class RolloutController:
    """See the module docstring. `interval`: seconds between evaluations."""

    def __init__(
        self,
        table: RolloutTable,
        tap: RolloutTap,
        registry: Callable[[], Registry],
        metrics: RolloutMetrics | None = None,
        interval: float = 1.0,
    ) -> None:
        self.table = table
        self._registry = registry
        # Version events to act on (model, version, failed): a newly published version to enter,
        # or a rollout's canary whose load failed. Open only while `run` runs.
        self._published: MemoryObjectSendStream[tuple[str, int, bool]] | None = None
        self._wake: anyio.Event | None = None
        tap.on_canary_error = self._poke
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
        """Evaluate every `interval` seconds, and enter newly published versions, until
        cancelled (lifespan shutdown)."""
        send, receive = anyio.create_memory_object_stream[tuple[str, int, bool]](64)
        self._published = send
        try:
            async with send, receive, anyio.create_task_group() as tg:
                tg.start_soon(self._enter_published, receive)
                task_status.started()
                while True:
                    self._wake = anyio.Event()
                    with anyio.move_on_after(self.interval):
                        await self._wake.wait()  # or sooner: a canary error (tap.on_canary_error)
                    try:
                        self.tick()
                    except Exception:  # a bug here must not end automatic rollback everywhere
                        log.exception("rollout controller: evaluation failed")
                    await anyio.sleep(MIN_GAP_SECONDS)
        finally:
            self._published = None
            self._wake = None

    def _poke(self, model: str) -> None:
        """The tap saw a canary (or shadow) error: evaluate now rather than at the next
        interval, so a broken canary fails fewer requests before its rollback."""
        if self._wake is not None:
            self._wake.set()

    # ---- auto-enter (Policy.on_publish) --------------------------------------------------

    def version_state(self, model: str, status: VersionStatus) -> None:
        """Registry state observer (loop thread, inside the lifecycle's state change): a newer
        version of an opted-in model started LOADING. Only queued here (re-entering the registry
        from its own callback is not safe); `_enter_published` starts the rollout on the next
        loop iteration, long before the version can be AVAILABLE (a load takes a thread hop and
        a SavedModel load at the very least), so the split holds the current default as stable
        before the version policy could move the route or unload it.

        Also: the canary of an active rollout ended with an error (its load failed): queued for
        `canary_failed`, which rolls the rollout back (it would wait for canary samples forever,
        stable pinned, and a fix published after it could not enter a rollout of its own)."""
        failed = status.state is VersionState.END and status.error_code != "OK"
        if failed:
            r = self.table.active(model)
            if r is None or r.canary != status.version:
                return
        elif status.state is VersionState.LOADING:
            policy = self.table.policies.get(model)
            if policy is None or policy.on_publish not in ("rollout", "shadow"):
                return
        else:
            return
        if self._published is None:  # not running (starting or shutting down)
            return
        try:
            self._published.send_nowait((model, status.version, failed))
        except anyio.WouldBlock:
            log.warning("rollout of model %s: too many publications queued, %d not entered",
                        model, status.version)  # fmt: skip

    async def _enter_published(
        self, receive: MemoryObjectReceiveStream[tuple[str, int, bool]]
    ) -> None:
        async for model, version, failed in receive:
            try:
                if failed:
                    self.canary_failed(model, version)
                else:
                    self.enter(model, version)
            except HotserveError as exc:
                log.warning("rollout of model %s: version %d not entered: %s", model, version, exc)
            except Exception:  # a bug must not end auto-enter, nor the lifespan's task group
                log.exception("rollout of model %s: entering version %d failed", model, version)

    def canary_failed(self, model: str, version: int) -> Rollout | None:
        """Roll back the model's automatic rollout whose canary `version` failed to load (a
        manual or paused rollout is left to its operator). None when nothing was done."""
        r = self.table.active(model)
        if r is None or r.canary != version or not r.automatic or r.phase is Phase.PAUSED:
            return None
        reason = f"automatic: canary version {version} failed to load"
        log.warning("rollout of model %s: rolling back: %s", model, reason)
        done = self.table.rollback(model, reason, source="controller")
        self.metrics.decided(model, "rollback")
        return done

    def enter(self, model: str, version: int) -> Rollout | None:
        """Start the model's policy rollout for newly published `version`, with the version
        serving the default route now as stable. None (nothing done) when the model has no
        opt-in policy, serves nothing yet (first load), already runs a rollout, or `version` is
        not newer than the default."""
        policy = self.table.policies.get(model)
        if policy is None or policy.on_publish not in ("rollout", "shadow"):
            return None
        if self.table.rollouts.get(model) is not None and not self.table.rollouts[model].phase.over:
            return None
        route = self._registry().snapshot.models.get(model)
        current = route.latest if route is not None else None
        if current is None or current.id.version >= version:
            return None
        rollout = from_template(policy, current.id.version, version)
        started = self.table.start(rollout, source="controller")
        self.metrics.decided(model, "enter")
        log.info("rollout of model %s: version %d published, entered a %s rollout against %d",
                 model, version, rollout.phase.value, current.id.version)  # fmt: skip
        return started

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
            try:
                self._evaluate(model, rollout, now)
            except Exception:  # one model's bug must not stop the others' rollbacks
                log.exception("rollout of model %s: evaluation failed", model)

    def _evaluate(self, model: str, rollout: Rollout, now: float) -> None:
        if rollout.phase.over:
            return
        tap = self.tap.taps.get(model)
        if tap is None:
            return
        snap = tap.analysis.snapshot(now)
        judged = verdict(snap, rollout.thresholds, rollout.phase)
        self.judgements[model] = judged
        if not rollout.automatic or rollout.phase is Phase.PAUSED:
            return  # judged and shown, not acted on
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


def from_template(policy: Policy, stable: int, canary: int) -> Rollout:
    """The rollout `policy` starts for a published `canary`: its template (or the defaults)
    with the versions filled in; "shadow" starts in SHADOW at weight 0 (mirroring everything
    when the template mirrors nothing), "rollout" at the first step."""
    t = policy.template or Rollout(model=policy.model, stable=stable, canary=canary)
    reason = f"version {canary} published (on_publish={policy.on_publish})"
    if policy.on_publish == "shadow":
        return replace(
            t, model=policy.model, stable=stable, canary=canary, weight=0.0,
            shadow=t.shadow or 1.0, phase=Phase.SHADOW, reason=reason,
        )  # fmt: skip
    first = t.steps[0] if t.steps else 1.0
    return replace(
        t, model=policy.model, stable=stable, canary=canary, weight=first, phase=Phase.CANARY,
        reason=reason,
    )  # fmt: skip


def next_step(r: Rollout) -> float | None:
    """The weight after the current one (SHADOW: the first step), None when the canary has the
    whole route (time to promote)."""
    if r.phase is Phase.SHADOW:
        return r.steps[0] if r.steps else 1.0
    if r.weight >= 1.0:
        return None
    return next((s for s in r.steps if s > r.weight), 1.0)
