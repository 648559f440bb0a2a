"""What one small `/v1` request costs in the handler, this checkout against a baseline checkout.

In-process, no sockets: the app of each checkout (in its own process, pinned to one core) serves
the demo repository (`models/`), and the ASGI app is called directly with a small predict
request; best of 7 repeats of N calls, so other jobs on a shared machine mostly drop out.
Rounds alternate between the checkouts; the report gives per-round ratios (this ÷ baseline).

Usage: .venv/bin/python scripts/bench/rest_overhead.py --baseline DIR [--rounds 3] [--n 400]
(DIR: e.g. `git worktree add /tmp/base main`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD = r"""
import asyncio, json, sys, time
from app.main import create_app
from app.settings import Settings

app = create_app(Settings(model_repository=sys.argv[1]))
n = int(sys.argv[2])
BODIES = {
    "half_plus_two": json.dumps({"instances": [1.0, 2.0, 5.0]}).encode(),
    "mlp": json.dumps({"instances": [[0.5] * 784]}).encode(),
}

async def main():
    async with app.router.lifespan_context(app):
        while not app.state.registry.is_ready():
            await asyncio.sleep(0.05)
        out = {}
        for model, body in BODIES.items():
            path = f"/v1/models/{model}:predict"
            scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                     "query_string": b"", "headers": [(b"content-length", str(len(body)).encode())]}
            async def receive():
                return {"type": "http.request", "body": body, "more_body": False}
            status = []
            async def send(message):
                if message["type"] == "http.response.start":
                    status.append(message["status"])
            for _ in range(200):
                await app(dict(scope), receive, send)
            assert set(status) == {200}, status[:3]
            best = float("inf")
            for _ in range(7):
                t = time.perf_counter()
                for _ in range(n):
                    await app(dict(scope), receive, send)
                best = min(best, (time.perf_counter() - t) / n)
            out[model] = best * 1e6
        print(json.dumps(out))

asyncio.run(main())
"""


def measure(checkout: Path, n: int) -> dict[str, float]:
    cmd = [sys.executable, "-c", CHILD, str(REPO / "models"), str(n)]
    if (os.cpu_count() or 1) >= 2:
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        cmd, cwd=checkout, env=env, capture_output=True, text=True, check=True, timeout=600
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = [("this", REPO), ("baseline", args.baseline)]
        runs = dict((name, measure(path, args.n)) for name, path in order[:: 1 if r % 2 else -1])
        print(f"round {r}: {json.dumps(runs)}", flush=True)
        for model, us in runs["this"].items():
            ratios.setdefault(model, []).append(us / runs["baseline"][model])
    print("\n| model | this ÷ baseline, per round | median |\n|---|---|---|")
    for model, values in ratios.items():
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {model} | {rounds} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
