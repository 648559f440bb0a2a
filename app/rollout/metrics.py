"""Prometheus series of rollouts and shadow traffic, collected at scrape time (issue 11).

Registered on the app's own `CollectorRegistry` (`app.metrics.Metrics.prometheus`) by
`app.main`. Series (Prometheus naming; `model` is a configured model's name, never a client's):
- `hotserve_rollout_canary_weight{model}`: the canary's share of the default route, 0..1;
- `hotserve_rollout_shadow_share{model}`: the share of default-route requests mirrored, 0..1;
- `hotserve_rollout_phase{model,phase}`: 1 for the rollout's phase, else 0;
- `hotserve_rollout_decisions_total{model,decision}`: the controller's steps, promotions,
  rollbacks and automatic entries (`enter`);
- `hotserve_rollout_window_requests{model,arm}` / `..._window_errors{model,arm}` and
  `hotserve_rollout_window_p99_seconds{model,arm}`: the analysis window per arm
  (arm: stable, canary, shadow);
- `hotserve_shadow_requests_total{model,outcome}`: mirrored requests by outcome (ok, error,
  dropped, primary_failed, unavailable);
- `hotserve_shadow_divergence_max{model}`: the largest |canary - primary| in the window
  (+Inf when answers did not line up); `hotserve_shadow_argmax_agreement{model}`.
Loop thread only (the scrape runs there), no locks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.rollout.shadow import RolloutTap
from app.rollout.spec import Phase, Rollout


class RolloutMetrics:
    """Decision counters (fed by the controller) and the scrape-time view of the table and
    the tap. `rollouts` returns the table's current rollouts."""

    def __init__(self, rollouts: Callable[[], Mapping[str, Rollout]], tap: RolloutTap) -> None:
        self._rollouts = rollouts
        self._tap = tap
        self.decisions: dict[tuple[str, str], int] = {}

    def decided(self, model: str, decision: str) -> None:
        key = (model, decision)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's Collector protocol."""
        weight = GaugeMetricFamily(
            "hotserve_rollout_canary_weight",
            "The canary's share of the default route.",
            labels=["model"],
        )
        share = GaugeMetricFamily(
            "hotserve_rollout_shadow_share",
            "The share of default-route requests also run on the canary.",
            labels=["model"],
        )
        phase = GaugeMetricFamily(
            "hotserve_rollout_phase",
            "1 for the rollout's phase, else 0.",
            labels=["model", "phase"],
        )
        for model, r in self._rollouts().items():
            weight.add_metric([model], r.weight)
            share.add_metric([model], r.shadow if not r.phase.over else 0.0)
            for p in Phase:
                phase.add_metric([model, p.value], float(r.phase is p))
        yield weight
        yield share
        yield phase
        decisions = CounterMetricFamily(
            "hotserve_rollout_decisions",
            "Automatic rollout decisions: step, promote, rollback, enter.",
            labels=["model", "decision"],
        )
        for (model, decision), n in self.decisions.items():
            decisions.add_metric([model, decision], n)
        yield decisions
        yield from self._windows()

    def _windows(self) -> Iterator[Metric]:
        requests = GaugeMetricFamily(
            "hotserve_rollout_window_requests",
            "Requests per arm in the rollout's analysis window.",
            labels=["model", "arm"],
        )
        errors = GaugeMetricFamily(
            "hotserve_rollout_window_errors",
            "Server-side errors per arm in the rollout's analysis window.",
            labels=["model", "arm"],
        )
        p99 = GaugeMetricFamily(
            "hotserve_rollout_window_p99_seconds",
            "p99 of the model's share of latency per arm in the analysis window.",
            labels=["model", "arm"],
        )
        diff = GaugeMetricFamily(
            "hotserve_shadow_divergence_max",
            "Largest |canary - primary| over mirrored answers in the window (+Inf: mismatch).",
            labels=["model"],
        )
        agree = GaugeMetricFamily(
            "hotserve_shadow_argmax_agreement",
            "Fraction of classifier rows whose argmax agrees, mirrored answers in the window.",
            labels=["model"],
        )
        for model, tap in self._tap.taps.items():
            snap = tap.analysis.snapshot()
            for arm, stats in (("stable", snap.stable), ("canary", snap.canary)):
                requests.add_metric([model, arm], stats.requests)
                errors.add_metric([model, arm], stats.errors)
                if stats.p99_ms is not None:
                    p99.add_metric([model, arm], stats.p99_ms / 1000)
            s = snap.shadow
            requests.add_metric([model, "shadow"], s.samples)
            errors.add_metric([model, "shadow"], s.errors)
            if s.p99_ms is not None:
                p99.add_metric([model, "shadow"], s.p99_ms / 1000)
            if s.max_abs_diff is not None:
                diff.add_metric(
                    [model], s.max_abs_diff if math.isfinite(s.max_abs_diff) else math.inf
                )
            if s.agreement is not None:
                agree.add_metric([model], s.agreement)
        shadow = CounterMetricFamily(
            "hotserve_shadow_requests",
            "Mirrored (shadow) requests by outcome (ok, error, dropped, primary_failed,"
            " unavailable).",
            labels=["model", "outcome"],
        )
        for (model, outcome), n in self._tap.totals.items():
            shadow.add_metric([model, outcome], n)
        yield from (requests, errors, p99, diff, agree, shadow)
