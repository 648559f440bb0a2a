"""The rollout analysis window and verdict (app.rollout.analysis): pure, fake clock."""

from __future__ import annotations

import math

from app.rollout.analysis import Analysis, Verdict, verdict
from app.rollout.divergence import Divergence
from app.rollout.spec import Phase, Thresholds

T = Thresholds(min_requests=20, max_error_rate_increase=0.05, max_p99_ratio=2.0)


def fill(a: Analysis, arm: str, n: int, seconds: float, errors: int = 0, t0: float = 100.0) -> None:
    for i in range(n):
        a.record(arm, seconds, ok=i >= errors, now=t0 + i * 0.01)


def test_too_few_samples_is_no_verdict_then_healthy() -> None:
    a = Analysis(10)
    fill(a, "stable", 100, 0.002)
    fill(a, "canary", 10, 0.002)
    assert verdict(a.snapshot(now=101), T, Phase.CANARY).verdict is Verdict.NO_VERDICT
    fill(a, "canary", 30, 0.002, t0=101)
    j = verdict(a.snapshot(now=101.5), T, Phase.CANARY)
    assert j.verdict is Verdict.HEALTHY, j


def test_error_rate_against_stable() -> None:
    a = Analysis(10)
    fill(a, "stable", 100, 0.002, errors=10)  # 10%: the client's share of trouble, say
    fill(a, "canary", 40, 0.002, errors=5)  # 12.5%: +2.5 points, within +5
    assert verdict(a.snapshot(now=101), T, Phase.CANARY).verdict is Verdict.HEALTHY
    fill(a, "canary", 40, 0.002, errors=20, t0=101)  # 25/80 = 31%
    j = verdict(a.snapshot(now=101.9), T, Phase.CANARY)
    assert j.verdict is Verdict.UNHEALTHY and "canary errors 25/80" in j.reason


def test_an_always_failing_canary_is_judged_before_min_requests() -> None:
    a = Analysis(10)
    fill(a, "stable", 100, 0.002)
    fill(a, "canary", 1, 0.002, errors=1)  # 1/20 = 5%: not over +5% yet
    assert verdict(a.snapshot(now=101), T, Phase.CANARY).verdict is Verdict.NO_VERDICT
    fill(a, "canary", 2, 0.002, errors=2, t0=100.5)  # 2/20 = 10%: cannot come back under
    assert verdict(a.snapshot(now=101), T, Phase.CANARY).verdict is Verdict.UNHEALTHY


def test_p99_ratio() -> None:
    a = Analysis(10)
    fill(a, "stable", 100, 0.002)
    fill(a, "canary", 99, 0.010)
    # 99 samples: a p99 would be the maximum (a cold version's first request): not compared yet
    assert verdict(a.snapshot(now=101), T, Phase.CANARY).verdict is Verdict.HEALTHY
    fill(a, "canary", 1, 0.010, t0=100.5)
    j = verdict(a.snapshot(now=101), T, Phase.CANARY)
    assert j.verdict is Verdict.UNHEALTHY and "p99" in j.reason
    b = Analysis(10)  # at 100% weight stable serves nothing: no p99 comparison
    fill(b, "canary", 200, 0.010)
    assert verdict(b.snapshot(now=101), T, Phase.CANARY).verdict is Verdict.HEALTHY
    c = Analysis(10)  # a cold start: 2 slow requests of 300 stay out of the p99
    fill(c, "stable", 300, 0.002)
    fill(c, "canary", 2, 0.100)
    fill(c, "canary", 298, 0.002, t0=100.1)
    assert verdict(c.snapshot(now=104), T, Phase.CANARY).verdict is Verdict.HEALTHY


def test_old_seconds_slide_out_of_the_window() -> None:
    a = Analysis(5)
    fill(a, "stable", 100, 0.002)
    fill(a, "canary", 50, 0.002, errors=50)
    assert verdict(a.snapshot(now=101), T, Phase.CANARY).verdict is Verdict.UNHEALTHY
    later = a.snapshot(now=120)
    assert later.canary.requests == 0 and later.stable.requests == 0


def test_shadow_divergence_agreement_and_errors() -> None:
    t = Thresholds(min_requests=10, max_abs_diff=0.5, min_argmax_agreement=0.9)
    a = Analysis(10)
    fill(a, "stable", 50, 0.002)
    for i in range(9):
        a.record_shadow(0.002, Divergence(0.1, 2, 2), now=100 + i * 0.01)
    j = verdict(a.snapshot(now=100.5), t, Phase.SHADOW)
    assert j.verdict is Verdict.NO_VERDICT and "9/10 shadow samples" in j.reason
    a.record_shadow(0.002, Divergence(0.2, 2, 2), now=100.2)
    assert verdict(a.snapshot(now=100.5), t, Phase.SHADOW).verdict is Verdict.HEALTHY
    a.record_shadow(0.002, Divergence(math.inf), now=100.3)
    j = verdict(a.snapshot(now=100.5), t, Phase.SHADOW)
    assert j.verdict is Verdict.UNHEALTHY and "max |diff| inf" in j.reason
    assert a.snapshot(now=100.5).as_dict()["shadow"]["max_abs_diff"] == "inf"  # type: ignore[index]

    b = Analysis(10)
    for i in range(10):
        b.record_shadow(0.002, Divergence(0.0, 10, 5 if i == 0 else 10), now=100 + i * 0.01)
    assert verdict(b.snapshot(now=100.5), t, Phase.SHADOW).verdict is Verdict.HEALTHY  # 95%
    b.record_shadow(0.002, Divergence(0.0, 10, 0), now=100.4)  # 95/110 = 86%
    j = verdict(b.snapshot(now=100.5), t, Phase.SHADOW)
    assert j.verdict is Verdict.UNHEALTHY and "argmax agreement 86.36% under 90.00%" in j.reason

    c = Analysis(10)
    c.record_shadow(0.002, None, now=100)  # the shadow failed where the primary answered
    j = verdict(c.snapshot(now=100.5), t, Phase.SHADOW)
    assert j.verdict is Verdict.UNHEALTHY and "shadow errors 1/1" in j.reason
    # a failing shadow also fails a canary phase that mirrors on the side
    assert verdict(c.snapshot(now=100.5), t, Phase.CANARY).verdict is Verdict.UNHEALTHY
