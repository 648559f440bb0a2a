"""Divergence of a canary's answer from the primary's (app.rollout.divergence)."""

from __future__ import annotations

import math

import anyio
import numpy as np

from app.rollout.divergence import SMALL_ELEMENTS, compare, compare_async
from app.serving.types import Classification


def f32(x: object) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def test_max_abs_diff_over_every_float_output() -> None:
    p = {"a": f32([1.0, 2.0]), "b": f32([[0.0], [10.0]])}
    c = {"a": f32([1.5, 2.0]), "b": f32([[0.0], [7.0]])}
    d = compare(p, c)
    assert d.max_abs_diff == 3.0 and d.rows == 0 and d.agreement is None
    assert compare(p, p).max_abs_diff == 0.0


def test_classifier_rows_argmax_agreement() -> None:
    p = {"probs": f32([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])}
    c = {"probs": f32([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.1, 0.9]])}
    d = compare(p, c)
    assert (d.rows, d.agreeing_rows, d.agreement) == (4, 3, 0.75)
    assert math.isclose(d.max_abs_diff, 0.5, rel_tol=1e-6)


def test_mismatches_are_divergent_not_errors() -> None:
    p = {"y": f32([1.0, 2.0])}
    assert compare(p, {"y": f32([1.0, 2.0, 3.0])}).max_abs_diff == math.inf  # shape
    assert compare(p, {"y": np.asarray([1.0, 2.0])}).max_abs_diff == math.inf  # dtype
    assert compare(p, {"z": f32([1.0, 2.0])}).max_abs_diff == math.inf  # alias
    assert compare(p, {"y": f32([1.0, math.nan])}).max_abs_diff == math.inf  # NaN on one side
    nan = {"y": f32([math.nan, 1.0])}
    assert compare(nan, nan).max_abs_diff == 0.0  # NaN on both sides agrees
    ints = {"k": np.asarray([1, 2])}
    assert compare(ints, ints).max_abs_diff == 0.0
    assert compare(ints, {"k": np.asarray([1, 3])}).max_abs_diff == math.inf
    assert compare(p, f32([1.0, 2.0])).max_abs_diff == math.inf  # dict against a bare array


def test_classify_and_regress_results() -> None:
    classes = np.asarray([[b"a", b"b"]], dtype=object)
    p = Classification(classes, f32([[0.7, 0.3]]))
    same = compare(p, Classification(classes.copy(), f32([[0.6, 0.4]])))
    assert math.isclose(same.max_abs_diff, 0.1, rel_tol=1e-5) and same.agreement == 1.0
    other = Classification(np.asarray([[b"a", b"c"]], dtype=object), f32([[0.7, 0.3]]))
    assert compare(p, other).max_abs_diff == math.inf
    assert compare(f32([1.0, 2.0]), f32([1.0, 2.5])).max_abs_diff == 0.5  # regress


def test_big_answers_are_compared_off_the_loop() -> None:
    n = SMALL_ELEMENTS * 4
    p = {"y": np.zeros((n // 10, 10), dtype=np.float32)}
    c = {"y": np.zeros((n // 10, 10), dtype=np.float32)}
    c["y"][3, 4] = 2.0

    async def main() -> None:
        limiter = anyio.CapacityLimiter(1)
        d = await compare_async(p, c, limiter)
        assert d.max_abs_diff == 2.0 and d.rows == n // 10 and d.agreeing_rows == n // 10 - 1

    anyio.run(main)
