"""The rollout tap's shadow budget and outcomes (app.rollout.shadow), in-process with fake
runners injected through the registry callable: what is mirrored, what is dropped and why, that
the primary never waits for its shadow, and that the shadow holds a lease on the canary."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np

from app.core.types import ServableId
from app.core.versions import ModelVersion
from app.rollout.shadow import RolloutTap, ShadowBudget
from app.rollout.spec import Phase, Rollout
from app.serving.service import Serving
from app.serving.types import ModelRef

X = {"x": np.asarray([1.0, 2.0], np.float32)}


class Runner:
    """Answers 0.5x + bias; a shadow-side runner may wait on `gate` (held in flight)."""

    enforces_deadlines = True

    def __init__(self, bias: float, gate: anyio.Event | None = None, fail: bool = False) -> None:
        self.bias, self.gate, self.fail = bias, gate, fail
        self.in_flight = 0
        self.max_batch_size = 8

    async def submit(self, signature: str, inputs: Any, deadline: float | None = None) -> Any:
        self.in_flight += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await anyio.lowlevel.checkpoint()
            if self.fail:
                raise RuntimeError("broken on purpose")
            return {"y": inputs["x"] * 0.5 + self.bias}
        finally:
            self.in_flight -= 1


def version(v: int, runner: Runner) -> ModelVersion:
    return ModelVersion(ServableId("m", v), Path("."), None, runner, {"serving_default": None})  # type: ignore[arg-type, dict-item]


class Registry:
    def __init__(self, *versions: ModelVersion) -> None:
        self.versions = {mv.id.version: mv for mv in versions}
        self.snapshot = SimpleNamespace(models={"m": SimpleNamespace(versions=self.versions)})

    def resolve(self, name: str, v: int | None, label: str | None) -> ModelVersion:
        from app.errors import NotFound

        if v not in self.versions:
            raise NotFound("not loaded")
        return self.versions[v]


SIG = SimpleNamespace(name="serving_default")


async def primaries(serving: Serving, stable: ModelVersion, n: int) -> list[float]:
    ref = ModelRef("m")
    out = []
    for _ in range(n):
        y = await serving.run(stable, SIG, X, None, ref=ref)  # type: ignore[arg-type]
        out.append(float(y["y"][0]))
    return out


async def test_budget_drops_shadows_and_the_primary_never_waits() -> None:
    gate = anyio.Event()
    stable, canary = version(1, Runner(1.0)), version(2, Runner(2.0, gate))
    reg = Registry(stable, canary)
    tap = RolloutTap(lambda: reg, ShadowBudget(max_in_flight=3, batch_share=1.0))  # type: ignore[arg-type, return-value]
    tap.set(Rollout("m", 1, 2, shadow=1.0, phase=Phase.SHADOW), "m")
    serving = Serving(lambda: reg, rollouts=tap)  # type: ignore[arg-type, return-value]
    async with anyio.create_task_group() as tg:
        await tg.start(tap.run)
        with anyio.fail_after(5):  # the canary is stuck: primaries must not wait for it
            answers = await primaries(serving, stable, 10)
        assert answers == [1.5] * 10  # every answer is the primary's
        assert canary.refcount == 3  # each running shadow holds a lease on the canary
        m = tap.taps["m"]
        assert (m.in_flight, m.outcomes["dropped"]) == (3, 7)
        gate.set()
        with anyio.fail_after(5):
            while m.in_flight:
                await anyio.sleep(0.01)
        assert canary.refcount == 0 and m.outcomes["ok"] == 3
        snap = m.analysis.snapshot()
        assert snap.shadow.samples == 3 and snap.shadow.max_abs_diff == 1.0
        assert snap.shadow.dropped == 7 and snap.stable.requests == 10
        assert tap.totals[("m", "dropped")] == 7
        tg.cancel_scope.cancel()


async def test_batch_share_and_a_busy_primary_drop_shadows() -> None:
    gate = anyio.Event()
    stable, canary = version(1, Runner(1.0)), version(2, Runner(2.0, gate))
    reg = Registry(stable, canary)
    # 2 rows per request, 8-row batches at a 0.5 share: 4 rows, two shadows at a time
    tap = RolloutTap(lambda: reg, ShadowBudget(max_in_flight=100, batch_share=0.5))  # type: ignore[arg-type, return-value]
    tap.set(Rollout("m", 1, 2, shadow=1.0, phase=Phase.SHADOW), "m")
    serving = Serving(lambda: reg, rollouts=tap)  # type: ignore[arg-type, return-value]
    async with anyio.create_task_group() as tg:
        await tg.start(tap.run)
        await primaries(serving, stable, 5)
        m = tap.taps["m"]
        assert (m.in_flight, m.outcomes["dropped"]) == (2, 3)
        gate.set()
        while m.in_flight:
            await anyio.sleep(0.01)
        stable.runner.in_flight = 10**6  # type: ignore[misc]  # the primary looks overloaded
        tap.budget = ShadowBudget(busy_in_flight=64)
        await primaries(serving, stable, 2)
        assert m.outcomes["dropped"] == 5 and m.in_flight == 0
        tg.cancel_scope.cancel()


async def test_shadow_errors_count_only_when_the_primary_answered() -> None:
    stable, canary = version(1, Runner(1.0)), version(2, Runner(2.0, fail=True))
    canary.runner.max_batch_size = 1000  # type: ignore[attr-defined]  # no drops here
    reg = Registry(stable, canary)
    tap = RolloutTap(lambda: reg)  # type: ignore[arg-type, return-value]
    tap.set(Rollout("m", 1, 2, shadow=1.0, phase=Phase.SHADOW), "m")
    serving = Serving(lambda: reg, rollouts=tap)  # type: ignore[arg-type, return-value]
    async with anyio.create_task_group() as tg:
        await tg.start(tap.run)
        assert await primaries(serving, stable, 4) == [1.5] * 4
        stable.runner.fail = True  # type: ignore[attr-defined]  # now both fail: the client's input, say
        for _ in range(3):
            with contextlib.suppress(RuntimeError):
                await primaries(serving, stable, 1)
        await anyio.sleep(0.05)
        m = tap.taps["m"]
        assert m.outcomes["error"] == 4 and m.outcomes["primary_failed"] == 3, m.outcomes
        snap = m.analysis.snapshot()
        assert snap.shadow.samples == 4 and snap.shadow.errors == 4
        assert snap.stable.requests == 7 and snap.stable.errors == 3
        del reg.versions[2]  # the canary went away: nothing to compare
        stable.runner.fail = False  # type: ignore[attr-defined]
        await primaries(serving, stable, 1)
        await anyio.sleep(0.05)
        assert m.outcomes["unavailable"] == 1
        tg.cancel_scope.cancel()


async def test_no_rollout_and_named_versions_are_not_tapped() -> None:
    stable, canary = version(1, Runner(1.0)), version(2, Runner(2.0))
    reg = Registry(stable, canary)
    tap = RolloutTap(lambda: reg)  # type: ignore[arg-type, return-value]
    serving = Serving(lambda: reg, rollouts=tap)  # type: ignore[arg-type, return-value]
    await primaries(serving, stable, 2)  # no rollout: nothing recorded anywhere
    assert tap.taps == {}
    tap.set(Rollout("m", 1, 2, shadow=1.0, phase=Phase.SHADOW), "m")
    y = await serving.run(stable, SIG, X, None, ref=ModelRef("m", version=1))  # type: ignore[arg-type]
    assert float(y["y"][0]) == 1.5
    assert tap.taps["m"].analysis.snapshot().stable.requests == 0  # named: not an arm's
    tap.set(None, "m")
    assert "m" not in tap.models
