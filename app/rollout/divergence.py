"""How far a canary's answer is from the primary's, for one mirrored (shadow) request.

`compare(primary, canary)` takes the two answers as the serving layer returns them (named numpy
outputs for predict, a `Classification` for classify, a float array for regress) and returns a
`Divergence`:

- `max_abs_diff`: the largest |canary - primary| over every element of every float output
  (same alias, same shape). A missing alias, a shape or dtype mismatch, or a NaN on one side only
  is *divergent* (`math.inf`), never an exception: a candidate that answers in another shape is
  exactly what a shadow must catch. Non-float outputs (ints, strings) count as 0 when equal and
  inf when not.
- `rows`/`agreeing_rows`: for classifier-shaped outputs (float [batch, classes], classes >= 2)
  how many rows there are and in how many the argmax agrees (summed over such outputs).

Cost: O(elements). Answers up to `SMALL_ELEMENTS` are compared on the calling thread (a few µs);
`compare_async` sends bigger ones to a worker thread through the given limiter so the event loop
never spends milliseconds on a large output. Pure, no state; any thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from anyio import to_thread

from app.serving.types import Classification

Array = np.ndarray[Any, Any]
Answer = dict[str, Array] | Classification | Array

# Above this many elements in total, compare in a worker thread (measured: ~10 µs at 4096).
SMALL_ELEMENTS = 4096


@dataclass(frozen=True, slots=True)
class Divergence:
    """One request's divergence: `max_abs_diff` >= 0 (inf when the answers do not line up),
    `rows` classifier rows compared and `agreeing_rows` of them with the same argmax."""

    max_abs_diff: float = 0.0
    rows: int = 0
    agreeing_rows: int = 0

    @property
    def agreement(self) -> float | None:
        """Fraction of classifier rows whose argmax agrees; None without classifier outputs."""
        return self.agreeing_rows / self.rows if self.rows else None


MISMATCH = Divergence(max_abs_diff=math.inf)


def _as_dict(answer: Answer) -> dict[str, Array] | None:
    if isinstance(answer, Classification):
        out: dict[str, Array] = {}
        if answer.classes is not None:
            out["classes"] = answer.classes
        if answer.scores is not None:
            out["scores"] = answer.scores
        return out
    if isinstance(answer, np.ndarray):
        return {"": answer}
    if isinstance(answer, dict):
        return answer
    return None


def size(answer: Answer) -> int:
    """Elements in an answer (to decide between inline and a worker thread)."""
    d = _as_dict(answer)
    return sum(int(np.size(a)) for a in d.values()) if d else 0


def _pair(p: Array, c: Array) -> Divergence:
    if p.shape != c.shape or p.dtype != c.dtype:
        return MISMATCH
    if p.size == 0:
        return Divergence()
    if p.dtype.kind != "f":
        return Divergence() if np.array_equal(p, c) else MISMATCH
    with np.errstate(invalid="ignore", over="ignore"):
        worst = float(np.max(np.abs(c - p)))  # in the outputs' dtype: one pass, no copies
    if math.isnan(worst):  # a NaN somewhere (or inf - inf): the careful path
        worst = _max_diff_with_nans(p, c)
    if p.ndim == 2 and p.shape[1] >= 2:
        agree = int(np.count_nonzero(np.argmax(p, axis=1) == np.argmax(c, axis=1)))
        return Divergence(worst, p.shape[0], agree)
    return Divergence(worst)


def _max_diff_with_nans(p: Array, c: Array) -> float:
    """NaN in the same places on both sides agrees, and so does the same infinity (inf - inf
    is NaN); a NaN on one side only, or different infinities, is divergent (inf)."""
    nan_p, nan_c = np.isnan(p), np.isnan(c)
    if bool(np.any(nan_p != nan_c)):
        return math.inf
    differ = ~nan_p & (p != c)  # equal values (equal infinities included) do not diverge
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(c[differ].astype(np.float64) - p[differ].astype(np.float64))
    worst = float(np.max(diff)) if diff.size else 0.0
    return math.inf if math.isnan(worst) else worst  # inf - inf


def compare(primary: Answer, canary: Answer) -> Divergence:
    """The divergence of `canary` from `primary` (see the module docstring). Never raises on
    mismatched answers; any thread."""
    p, c = _as_dict(primary), _as_dict(canary)
    if p is None or c is None or p.keys() != c.keys():
        return MISMATCH
    worst, rows, agree = 0.0, 0, 0
    for alias, pa in p.items():
        one = _pair(np.asarray(pa), np.asarray(c[alias]))
        worst = max(worst, one.max_abs_diff)
        rows += one.rows
        agree += one.agreeing_rows
    return Divergence(worst, rows, agree)


async def compare_async(
    primary: Answer, canary: Answer, limiter: anyio.CapacityLimiter | None = None
) -> Divergence:
    """`compare`, inline when both answers are small, else in a worker thread of `limiter`
    (loop thread caller)."""
    if size(primary) <= SMALL_ELEMENTS:  # same size as the canary's, or divergent anyway
        return compare(primary, canary)
    return await to_thread.run_sync(compare, primary, canary, limiter=limiter)
