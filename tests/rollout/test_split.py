"""The split alone: stable hashing, sticky keys, minimal movement between weights, the random
draw's share. Pure functions, no server."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from app.rollout.split import Split, point, to_canary

KEYS = [f"user-{i}" for i in range(20_000)]


def test_point_is_uniform_and_in_range() -> None:
    us = [point("m", k) for k in KEYS]
    assert all(0.0 <= u < 1.0 for u in us)
    # Share below 0.2: binomial(20000, 0.2) sd = 0.28%; 4 sd.
    share = sum(u < 0.2 for u in us) / len(us)
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(us))


def test_point_is_stable_across_processes() -> None:
    """BLAKE2b, not Python's salted hash(): another interpreter (another PYTHONHASHSEED) agrees."""
    code = "from app.rollout.split import point; print(repr(point('m', 'alice')))"
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env, cwd=root)
    assert float(out.stdout) == point("m", "alice")


def test_the_model_name_salts_the_point() -> None:
    a = [point("a", k) < 0.1 for k in KEYS[:2000]]
    b = [point("b", k) < 0.1 for k in KEYS[:2000]]
    assert a != b


def test_raising_the_weight_moves_only_the_keys_that_must_move() -> None:
    at5 = {k: to_canary("m", k, 0.05) for k in KEYS}
    at25 = {k: to_canary("m", k, 0.25) for k in KEYS}
    assert all(at25[k] for k in KEYS if at5[k])  # never back from canary to stable
    moved = sum(at5[k] != at25[k] for k in KEYS) / len(KEYS)
    # Expected 20% of keys; binomial sd sqrt(.2*.8/20000) = 0.28%, 4 sd.
    assert abs(moved - 0.20) < 4 * math.sqrt(0.2 * 0.8 / len(KEYS))
    assert all(to_canary("m", k, 0.05) == at5[k] for k in KEYS)  # same split, same arm


def test_keyless_draw_matches_the_weight_and_the_extremes() -> None:
    s = Split("m", "stable", "canary", 0.3)
    n = 20_000
    share = sum(s.pick(None) == "canary" for _ in range(n)) / n
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    assert {Split("m", 1, 2, 0.0).pick(k) for k in [None, *KEYS[:500]]} == {1}
    assert {Split("m", 1, 2, 1.0).pick(k) for k in [None, *KEYS[:500]]} == {2}
