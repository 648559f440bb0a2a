"""Sliding-window comparison of a rollout's canary against its stable version, and the verdict.

`Analysis` keeps, for one model's rollout, per-second buckets over `window_seconds`:
- per arm ("stable", "canary"): default-route requests, errors and a latency histogram (the
  model's share of a request: batch queueing + model call), in `app.control.traffic.Window`s;
- shadow: mirrored requests completed, shadow errors, their latency, and per second the largest
  divergence and the classifier rows compared / agreeing (`app.rollout.divergence`).

Errors are server faults and model errors (the model call raised, the queue was full, the version
went away); a request the client got wrong (bad input, a deadline it set) is not recorded as an
error: it is the client's fault on any version. The caller (`app.rollout.shadow.RolloutTap`)
classifies. A shadow error counts only when the primary answered the same inputs.

`verdict(snapshot, thresholds, phase)` is pure: NO_VERDICT (too few samples), HEALTHY, or
UNHEALTHY with the reason. Recording is O(1) per request; a snapshot is O(window x buckets)
and is taken about once a second by the controller. Loop thread only, no locks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum

from app.control.traffic import Window, quantile_ms
from app.rollout.divergence import Divergence
from app.rollout.spec import Phase, Thresholds

STABLE = "stable"
# Samples a p99 needs before it is compared: below 100 the 99th percentile is the maximum.
P99_SAMPLES = 100
CANARY = "canary"


@dataclass(frozen=True, slots=True)
class ArmStats:
    """One arm over the window: requests, errors, p99 of the model's latency share (ms)."""

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class ShadowStats:
    """Shadow over the window: completed samples (the primary answered), shadow errors among
    them, p99 latency (ms), the largest divergence (None: nothing compared) and classifier rows
    compared/agreeing. `dropped` is the total since the rollout began (not windowed)."""

    samples: int = 0
    errors: int = 0
    p99_ms: float | None = None
    max_abs_diff: float | None = None
    rows: int = 0
    agreeing_rows: int = 0
    dropped: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.rows if self.rows else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    stable: ArmStats
    canary: ArmStats
    shadow: ShadowStats

    def as_dict(self) -> dict[str, object]:
        def arm(a: ArmStats) -> dict[str, object]:
            return {"requests": a.requests, "errors": a.errors, "p99_ms": a.p99_ms}

        s = self.shadow
        diff = s.max_abs_diff
        return {
            STABLE: arm(self.stable),
            CANARY: arm(self.canary),
            "shadow": {
                "samples": s.samples,
                "errors": s.errors,
                "dropped": s.dropped,
                "p99_ms": s.p99_ms,
                "max_abs_diff": None if diff is None else (diff if math.isfinite(diff) else "inf"),
                "argmax_agreement": None if s.agreement is None else round(s.agreement, 4),
            },
        }


class Verdict(StrEnum):
    NO_VERDICT = "no_verdict"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str = ""


class _Divergences:
    """Per second: the largest divergence, classifier rows compared and agreeing."""

    __slots__ = ("_agree", "_max", "_rows", "_seconds", "span")

    def __init__(self, span: int) -> None:
        self.span = span
        self._seconds = [-1] * span
        self._max = [-1.0] * span  # -1: nothing compared that second
        self._rows = [0] * span
        self._agree = [0] * span

    def record(self, d: Divergence, now: float) -> None:
        second = int(now)
        slot = second % self.span
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._max[slot] = -1.0
            self._rows[slot] = self._agree[slot] = 0
        self._max[slot] = max(self._max[slot], d.max_abs_diff)
        self._rows[slot] += d.rows
        self._agree[slot] += d.agreeing_rows

    def totals(self, now: float) -> tuple[float | None, int, int]:
        current = int(now)
        worst, rows, agree = -1.0, 0, 0
        for slot in range(self.span):
            if current - self.span < self._seconds[slot] <= current:
                worst = max(worst, self._max[slot])
                rows += self._rows[slot]
                agree += self._agree[slot]
        return (worst if worst >= 0 else None), rows, agree


class Analysis:
    """The window of one model's rollout. `window_seconds` is rounded up to whole seconds."""

    def __init__(self, window_seconds: float) -> None:
        span = max(math.ceil(window_seconds), 1) + 1  # + the running second
        self.window_seconds = window_seconds
        self.arms = {STABLE: Window(span), CANARY: Window(span)}
        self.shadow = Window(span)
        self.divergence = _Divergences(span)
        self.shadow_dropped = 0

    # ---- recording (loop thread, O(1)) ---------------------------------------------------

    def record(self, arm: str, seconds: float, ok: bool, now: float | None = None) -> None:
        """One default-route request served by `arm` ("stable" | "canary") in `seconds`."""
        self.arms[arm].record(seconds, ok, time.monotonic() if now is None else now)

    def record_shadow(
        self, seconds: float, divergence: Divergence | None, now: float | None = None
    ) -> None:
        """One mirrored request whose primary answered: `divergence` None = the shadow failed."""
        now = time.monotonic() if now is None else now
        self.shadow.record(seconds, divergence is not None, now)
        if divergence is not None:
            self.divergence.record(divergence, now)

    def drop_shadow(self) -> None:
        self.shadow_dropped += 1

    # ---- reading -------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        """The window as of `now` (the running second included: the controller acts on fresh
        samples rather than a second late)."""
        now = time.monotonic() if now is None else now
        arms = {name: _arm(w, now) for name, w in self.arms.items()}
        total, errors, hist = self.shadow.totals(now, current_second=True)
        worst, rows, agree = self.divergence.totals(now)
        shadow = ShadowStats(
            samples=total,
            errors=errors,
            p99_ms=quantile_ms(hist, total, 0.99),
            max_abs_diff=worst,
            rows=rows,
            agreeing_rows=agree,
            dropped=self.shadow_dropped,
        )
        return Snapshot(arms[STABLE], arms[CANARY], shadow)


def _arm(window: Window, now: float) -> ArmStats:
    total, errors, hist = window.totals(now, current_second=True)
    return ArmStats(total, errors, quantile_ms(hist, total, 0.99))


def verdict(snap: Snapshot, t: Thresholds, phase: Phase) -> Judgement:
    """Judge the canary over the window. SHADOW judges the mirrored samples; CANARY (and
    PAUSED) the canary's own requests, plus the shadow samples when there are enough.

    Errors act before `min_requests` samples when the count already proves the rate: errors
    over max(samples, min_requests) above the threshold cannot come back under it, so a canary
    that always fails is rolled back after a handful of requests rather than `min_requests`.
    """
    if phase is Phase.SHADOW:
        return _judge_shadow(snap, t, required=True)
    canary, stable = snap.canary, snap.stable
    excess = canary.errors / max(canary.requests, t.min_requests) - stable.error_rate
    if canary.errors and excess > t.max_error_rate_increase:
        return Judgement(Verdict.UNHEALTHY, _error_reason("canary", canary, stable, t))
    shadow = _judge_shadow(snap, t, required=False)
    if shadow.verdict is Verdict.UNHEALTHY:
        return shadow
    if canary.requests < t.min_requests:
        return Judgement(Verdict.NO_VERDICT, f"{canary.requests}/{t.min_requests} canary requests")
    slow = _p99_reason("canary", canary.p99_ms, canary.requests, stable, t)
    if slow:
        return Judgement(Verdict.UNHEALTHY, slow)
    return Judgement(Verdict.HEALTHY)


def _judge_shadow(snap: Snapshot, t: Thresholds, *, required: bool) -> Judgement:
    s = snap.shadow
    if s.errors and s.errors / max(s.samples, t.min_requests) > t.max_error_rate_increase:
        why = f"shadow errors {s.errors}/{s.samples} over +{t.max_error_rate_increase:.2%}"
        return Judgement(Verdict.UNHEALTHY, why)
    if s.samples < t.min_requests:
        if required:
            return Judgement(Verdict.NO_VERDICT, f"{s.samples}/{t.min_requests} shadow samples")
        return Judgement(Verdict.NO_VERDICT)
    diff, agreement = s.max_abs_diff, s.agreement
    if t.max_abs_diff is not None and diff is not None and diff > t.max_abs_diff:
        why = f"shadow max |diff| {diff:.6g} over {t.max_abs_diff:g}"
        return Judgement(Verdict.UNHEALTHY, why)
    least = t.min_argmax_agreement
    if least is not None and agreement is not None and agreement < least:
        why = f"shadow argmax agreement {agreement:.2%} under {least:.2%}"
        return Judgement(Verdict.UNHEALTHY, why)
    slow = _p99_reason("shadow", s.p99_ms, s.samples, snap.stable, t)
    if slow:
        return Judgement(Verdict.UNHEALTHY, slow)
    return Judgement(Verdict.HEALTHY)


def _error_reason(who: str, arm: ArmStats, stable: ArmStats, t: Thresholds) -> str:
    return (
        f"{who} errors {arm.errors}/{arm.requests} vs stable {stable.errors}/{stable.requests}:"
        f" over +{t.max_error_rate_increase:.2%}"
    )


def _p99_reason(
    who: str, p99_ms: float | None, samples: int, stable: ArmStats, t: Thresholds
) -> str:
    """Why `who`'s p99 fails against stable's, or "". Both sides need `P99_SAMPLES` (and
    `min_requests`) samples: with fewer, a p99 is the maximum, and a new version's first
    requests are slow (a cold session's first runs) without the version being slow; at 100%
    canary weight stable serves nothing and there is no p99 to compare with."""
    enough = max(t.min_requests, P99_SAMPLES)
    if p99_ms is None or stable.p99_ms is None or samples < enough or stable.requests < enough:
        return ""
    if p99_ms > t.max_p99_ratio * stable.p99_ms:
        return f"{who} p99 {p99_ms:g} ms over {t.max_p99_ratio:g}x stable's {stable.p99_ms:g} ms"
    return ""
