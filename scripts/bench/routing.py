"""What a rollout costs per request on the routing hot path (issue 11), in ns per call.

In-process, no HTTP, no model: `app.core.routing.choose` over a one-model routing snapshot, best
of 7 timeit repeats:
- `default, no rollout`: the default route with no rollout configured (what every TF Serving
  style deployment pays); with `--baseline DIR` (a checkout without rollouts, e.g.
  `git worktree add /tmp/base main`) the same call is timed in DIR's code, in a subprocess, and
  the difference is what the feature costs a deployment that does not use it;
- `split, no key` / `split, key`: a rollout at 20%, keyless (random draw) and sticky (BLAKE2b of
  model + key);
- `split.point`: the hash alone; `rest _ref`: the REST edge building the request's ModelRef,
  with no rollout anywhere (no header scan) and with one (scanning 8 request headers for the
  routing key), against building the ModelRef alone (what the edge did before).

Usage: taskset -c 0 .venv/bin/python scripts/bench/routing.py [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def best_ns(fn: Callable[[], Any], repeats: int = 7) -> float:
    timer = timeit.Timer(fn)
    n, t = timer.autorange()
    number = max(1, int(n * 0.2 / max(t, 1e-9)))
    return min(timer.repeat(repeats, number)) / number * 1e9


def default_route_ns() -> float:
    """choose() for the default route, no rollout, in whatever `app` is importable."""
    from app.core.lifecycle import ModelRoute
    from app.core.routing import VersionRequest, choose

    mv: Any = object()
    models = {"m": ModelRoute(versions={1: mv}, latest=mv, labels={})}
    return best_ns(lambda: choose(models, VersionRequest("m")))


def this_checkout() -> dict[str, float]:
    from app.api.paths import Route
    from app.api.routes import RestOptions, TFServingRest
    from app.core.lifecycle import ModelRoute
    from app.core.routing import VersionRequest, choose
    from app.rollout.split import Split, point
    from app.serving.types import ModelRef

    stable: Any = object()
    canary: Any = object()
    split = Split("m", stable, canary, 0.2)
    models = {
        "m": ModelRoute(versions={1: stable, 2: canary}, latest=stable, labels={}, split=split)
    }
    unkeyed = TFServingRest(serving=SimpleNamespace(keyed=False), options=RestOptions())  # type: ignore[arg-type]
    keyed = TFServingRest(serving=SimpleNamespace(keyed=True), options=RestOptions())  # type: ignore[arg-type]
    route = Route(kind="predict", name="m", version=None, label=None)
    headers = [
        (b"host", b"127.0.0.1:8501"),
        (b"user-agent", b"python-httpx/0.27"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"connection", b"keep-alive"),
        (b"content-type", b"application/json"),
        (b"content-length", b"27"),
        (b"x-request-id", b"abc"),
    ]
    scope = {"headers": headers}
    return {
        "default, no rollout": default_route_ns(),
        "split, no key": best_ns(lambda: choose(models, VersionRequest("m"))),
        "split, key": best_ns(lambda: choose(models, VersionRequest("m", key="user-12345"))),
        "split.point": best_ns(lambda: point("m", "user-12345")),
        "rest _ref, no rollout anywhere": best_ns(lambda: unkeyed._ref(route, scope)),
        "rest _ref, a rollout: header scan": best_ns(lambda: keyed._ref(route, scope)),
        "ModelRef(name, version, label) alone": best_ns(lambda: ModelRef("m", None, None)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout without rollouts")
    parser.add_argument("--only-default", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only_default:  # the baseline subprocess
        print(json.dumps(default_route_ns()))
        return
    sys.path.insert(0, str(REPO))
    results = this_checkout()
    if args.baseline is not None:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--only-default"],
            cwd=args.baseline,
            env={"PYTHONPATH": str(args.baseline), "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            check=True,
        )
        results["default, no rollout (baseline)"] = json.loads(out.stdout)
    for name, ns in results.items():
        print(f"{name:40s} {ns:8.1f} ns")


if __name__ == "__main__":
    main()
