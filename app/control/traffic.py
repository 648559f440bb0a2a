"""Requests/s and p99 per version over the last few seconds, for the status page.

`ObservedRunner` wraps a version's runner (batcher or direct) and records each `submit` in a
`Window`: `WINDOW_SECONDS` one-second slots, each a request count and a histogram of latencies
(`BOUNDS`, exponential). The latency is the model's share of a request: queueing for a batch plus
the model call, not JSON decoding or the network (the edge's full latency is in the Prometheus
`request_latency` histogram, per model). Cost per request: two `time.monotonic()` calls and a
bisect into 48 bounds (~1 µs, measured by scripts/bench/microbench.py style runs; see README).
Runs on the event-loop thread only (submit is awaited there), so no locks.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import numpy as np

from app.core.batcher import Runner
from app.core.types import VersionState, VersionStatus

WINDOW_SECONDS = 10
# 50 µs .. ~60 s, x1.35 per bucket: p99 is reported as the upper bound of its bucket.
BOUNDS: tuple[float, ...] = tuple(50e-6 * 1.35**i for i in range(48))


class Window:
    """Counts and latency histograms of the last `span` whole seconds (`WINDOW_SECONDS` by
    default; the rollout analysis sizes its own). `record` is O(1); `summary`/`totals` are
    O(span x buckets)."""

    __slots__ = ("_counts", "_errors", "_hists", "_seconds", "span")

    def __init__(self, span: int = WINDOW_SECONDS) -> None:
        self.span = span = max(int(span), 2)
        self._seconds = [-1] * span
        self._counts = [0] * span
        self._errors = [0] * span
        self._hists = [[0] * (len(BOUNDS) + 1) for _ in range(span)]

    def record(self, seconds: float, ok: bool, now: float) -> None:
        second = int(now)
        slot = second % self.span
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._counts[slot] = self._errors[slot] = 0
            self._hists[slot] = [0] * (len(BOUNDS) + 1)
        self._counts[slot] += 1
        if not ok:
            self._errors[slot] += 1
        self._hists[slot][bisect.bisect_left(BOUNDS, seconds)] += 1

    def totals(self, now: float, current_second: bool = False) -> tuple[int, int, list[int]]:
        """(requests, errors, merged latency histogram) over the last whole seconds of the
        span, plus the running second when `current_second`."""
        current = int(now)
        total = errors = 0
        hists: list[list[int]] = []
        for slot in range(self.span):
            second = self._seconds[slot]
            if current - self.span < second < current or (current_second and second == current):
                total += self._counts[slot]
                errors += self._errors[slot]
                hists.append(self._hists[slot])
        if not hists:
            return total, errors, [0] * (len(BOUNDS) + 1)
        # One column sum per bucket: a new list per slot made a one-hour rollout window cost
        # ~15 ms of event-loop time per summary (3600 slots x 49 buckets).
        return total, errors, [sum(column) for column in zip(*hists, strict=True)]

    def summary(self, now: float | None = None) -> dict[str, float | int | None]:
        """Over the last complete seconds: requests/s, errors/s, p50 and p99 in milliseconds."""
        now = time.monotonic() if now is None else now
        total, errors, merged = self.totals(now)
        span = self.span - 1
        return {
            "requests_per_second": round(total / span, 2),
            "errors_per_second": round(errors / span, 2),
            "p50_ms": quantile_ms(merged, total, 0.50),
            "p99_ms": quantile_ms(merged, total, 0.99),
        }


def quantile_ms(hist: list[int], total: int, q: float) -> float | None:
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            bound = BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1]
            return round(bound * 1000, 3)
    return round(BOUNDS[-1] * 1000, 3)


class ObservedRunner:
    """A Runner that records each request's latency and outcome in `window`."""

    def __init__(self, inner: Runner, window: Window) -> None:
        self.inner = inner
        self.window = window

    async def submit(
        self, signature: str, inputs: dict[str, np.ndarray], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        started = time.monotonic()
        ok = False
        try:
            out = await self.inner.submit(signature, inputs, deadline)
            ok = True
            return out
        finally:
            now = time.monotonic()
            self.window.record(now - started, ok, now)

    async def close(self, timeout: float) -> None:
        await self.inner.close(timeout)

    @property
    def in_flight(self) -> int:
        return self.inner.in_flight

    @property
    def enforces_deadlines(self) -> bool:
        return self.inner.enforces_deadlines

    def __getattr__(self, name: str) -> Any:  # batcher extras some callers read (stats, tests)
        return getattr(self.inner, name)


class Traffic:
    """One `Window` per (model, version), created when the version's runner is built."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, int], Window] = {}

    def wrap(self, model: str, version: int, runner: Runner) -> Runner:
        window = self.windows[(model, version)] = Window()
        return ObservedRunner(runner, window)

    def forget(self, model: str, status: VersionStatus) -> None:
        """Registry state callback: a version that ended keeps no window (they would pile up
        over many swaps)."""
        if status.state is VersionState.END:
            self.windows.pop((model, status.version), None)

    def summary(self, model: str, version: int) -> dict[str, float | int | None]:
        window = self.windows.get((model, version))
        return window.summary() if window is not None else Window().summary()
