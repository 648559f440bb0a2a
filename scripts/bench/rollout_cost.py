"""What the rollout tap (issue 11) costs per request in `Serving.run`, in-process, in µs:

- `none`: no tap at all (Serving(rollouts=None));
- `idle`: the tap wired in, no model in a rollout (every server since issue 11);
- `arm`: the model in a rollout, the request recorded under its arm, no shadow;
- `shadow`: shadow 100% (a shadow task per request on a canary that answers after one loop
  turn, its divergence compared); the shadow tasks run on the same loop during the primaries'
  loop turns, so this is the whole loop-thread cost of mirroring, not only the primary's.
The runner answers after one loop turn (no model), so the numbers are the tap's own overhead.
Paired rounds (the variants back to back, order rotating), median of the per-round means.

    taskset -c 0 .venv/bin/python scripts/bench/rollout_cost.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from app.core.types import ServableId  # noqa: E402
from app.core.versions import ModelVersion  # noqa: E402
from app.rollout.shadow import RolloutTap  # noqa: E402
from app.rollout.spec import Phase, Rollout  # noqa: E402
from app.serving.service import Serving  # noqa: E402
from app.serving.types import ModelRef  # noqa: E402

N = 2000
ROUNDS = 15
OUT = {"y": np.asarray([2.5, 3.0, 4.5], np.float32)}


class Instant:
    enforces_deadlines = True
    in_flight = 0

    async def submit(self, signature: str, inputs: Any, deadline: float | None = None) -> Any:
        await asyncio.sleep(0)  # one loop turn, as a real runner takes: shadow tasks run here
        return OUT


def version(v: int) -> Any:
    return ModelVersion(ServableId("m", v), Path("."), None, Instant(), {"serving_default": None})  # type: ignore[arg-type]


STABLE: Any = None
CANARY: Any = None


class FakeRegistry:
    snapshot: Any = None

    def resolve(self, name: str, v: int | None, label: str | None) -> Any:
        return CANARY


async def cell(serving: Serving) -> float:
    sig = SimpleNamespace(name="serving_default")
    inputs = {"x": np.asarray([1.0, 2.0, 5.0], np.float32)}
    ref = ModelRef("m")
    start = time.perf_counter()
    for _ in range(N):
        await serving.run(STABLE, sig, inputs, None, ref=ref)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    await anyio.sleep(0.01)  # let shadow tasks finish outside the timed part
    return elapsed / N * 1e6


async def main() -> None:
    global STABLE, CANARY
    STABLE, CANARY = version(1), version(2)  # anyio.Event needs the running loop
    FakeRegistry.snapshot = SimpleNamespace(
        models={"m": SimpleNamespace(versions={1: STABLE, 2: CANARY})}
    )
    reg = FakeRegistry()
    taps = {name: RolloutTap(lambda: reg) for name in ("idle", "arm", "shadow")}  # type: ignore[arg-type, return-value]
    base = Rollout("m", stable=1, canary=2, weight=0.0, phase=Phase.SHADOW)
    taps["arm"].set(base, "m")
    taps["shadow"].set(Rollout("m", 1, 2, shadow=1.0, phase=Phase.SHADOW), "m")
    servings = {"none": Serving(lambda: reg)}  # type: ignore[arg-type, return-value]
    servings |= {k: Serving(lambda: reg, rollouts=t) for k, t in taps.items()}  # type: ignore[arg-type, return-value]
    results: dict[str, list[float]] = {k: [] for k in servings}
    async with anyio.create_task_group() as tg:
        await tg.start(taps["shadow"].run)
        names = list(servings)
        for r in range(ROUNDS):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name].append(await cell(servings[name]))
        tg.cancel_scope.cancel()
    base_us = statistics.median(results["none"])
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:7s} {med:6.2f} µs/request  (+{med - base_us:5.2f} µs vs none)")
    outcomes = taps["shadow"].taps["m"].outcomes
    print(f"shadow outcomes: {outcomes}")


if __name__ == "__main__":
    asyncio.run(main())
