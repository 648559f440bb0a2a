"""Which batch sizes a model's batchers ran lately: what a new version warms before it serves
while requests are in flight.

Why: a new version is warmed at every row count its batcher may run (`batch_sizes`), so its
first real batch of each size costs what the old version's last one did (TF builds per-shape
kernel state, e.g. oneDNN primitives, at a shape's first call: ~0.3 ms more for the demo MLP).
On a core that serving keeps busy those warmup calls are stolen from requests: each one delays
a batch of them by its own length, whatever runs it. Measured (bench_swap, the demo MLP under
16 closed-loop connections, max_batch_size 64): the 64 warmup sizes took 1.6-2.4 s at the load's
share, and 13-16% of the requests sent meanwhile were slower than the steady p99, about a third
of all the swap window's slow requests, while 16 clients never make a batch over 16 rows. So
while requests are in flight a load warms the sizes up to the largest batch the model ran in
the last `HORIZON` seconds (the sizes today's traffic makes, and every smaller one), and the
larger sizes only while no request is in flight; an idle server, or a model with no batch in
that time, warms every size. The price: a batch larger than any in the horizon, right after
a swap under load, pays its shape's first-call cost once.

`BatchUsage.record` is called by serving threads after each model call (a dict store: cheap
and atomic under the GIL); `warm_first` by the loading thread. Any thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

HORIZON = 600.0  # seconds of batches that decide the sizes a load under traffic warms


class BatchUsage:
    """The last time (`clock` seconds) each row count was run as one model call, for one model
    (shared by the batchers of its versions, so a new version sees the old one's batches)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[int, float] = {}

    def record(self, rows: int) -> None:
        """A model call of `rows` rows (after padding) just ran."""
        self._last[rows] = self._clock()

    def largest(self, horizon: float = HORIZON) -> int | None:
        """The largest row count run in the last `horizon` seconds, or None (none run)."""
        since = self._clock() - horizon
        recent = [rows for rows, at in list(self._last.items()) if at >= since]
        return max(recent) if recent else None

    def warm_first(self, sizes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Split `sizes` (ascending) into the ones a load warms whatever the traffic (up to
        the largest recent batch; all of them when there was none) and the ones it warms only
        while no request is in flight."""
        largest = self.largest()
        if largest is None:
            return tuple(sizes), ()
        first = tuple(s for s in sizes if s <= largest)
        return first, tuple(s for s in sizes if s > largest)
