"""The rollout table over a real Registry and the scripted fake loader (no TensorFlow): both arms
stay loaded under `latest`, the default route splits, promote and rollback end it as specified,
a rolled-back version stays out at the next scan, and every refusal has its error."""

from __future__ import annotations

from collections import Counter

import pytest

from app.errors import FailedPrecondition, InvalidArgument, NotFound
from app.rollout.spec import Phase, Rollout
from app.rollout.table import RolloutTable
from tests.fakes import Driver, Script, ScriptedLoader, model, until


def shares(d: Driver, n: int = 400) -> Counter[int]:
    return Counter(d.registry.resolve("m", None, None).id.version for _ in range(n))


async def serving_1_with_2_on_disk(d: Driver) -> RolloutTable:
    """Version 1 serving alone, then a scan that finds 1 and 2 once the rollout holds 1."""
    d.set_models(model())
    await d.offer("m", 1)
    await until(lambda: d.states("m") == {1: "AVAILABLE"})
    return RolloutTable(lambda: d.registry)


async def test_latest_policy_keeps_both_arms_loaded_and_splits_the_default_route() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        table = await serving_1_with_2_on_disk(d)
        await d.offer("m", 1, 2)  # under `latest`, 2 would replace 1 ...
        table.start(Rollout("m", stable=1, canary=2, weight=0.0, phase=Phase.SHADOW))
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        assert shares(d) == {1: 400}  # ... but the rollout keeps the route on stable
        assert not table.keyed()  # shadow: nothing splits, the edges skip the routing key
        table.set_weight("m", 0.5, "step")
        assert table.keyed()
        got = shares(d)
        assert got[1] > 100 and got[2] > 100
        assert table.get("m") is not None and table.get("m").phase is Phase.CANARY  # type: ignore[union-attr]
        assert d.registry.resolve("m", 1, None).id.version == 1  # named versions never move
        assert table.arm("m", 2) == "canary" and table.arm("m", 1) == "stable"
        await d.offer("m", 1, 2)  # a later scan changes nothing
        assert d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"}


async def test_canary_not_available_sends_everything_to_stable() -> None:
    loader = ScriptedLoader(v2=Script(fail=99))
    async with Driver(loader, max_num_load_retries=0).running() as d:
        table = await serving_1_with_2_on_disk(d)
        await d.offer("m", 1, 2)
        table.start(Rollout("m", stable=1, canary=2, weight=0.5))
        await until(lambda: d.states("m").get(2) == "END")
        assert shares(d) == {1: 400}
        with pytest.raises(FailedPrecondition, match="not AVAILABLE; it cannot be promoted"):
            table.promote("m")


async def test_promote_releases_stable() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        table = await serving_1_with_2_on_disk(d)
        await d.offer("m", 1, 2)
        table.start(Rollout("m", stable=1, canary=2, weight=0.25))
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        seen: list[tuple[str, Phase | None]] = []
        table.add_listener(lambda name, old, new: seen.append((name, new and new.phase)))
        done = table.promote("m", "healthy")
        assert done.phase is Phase.PROMOTED and table.active("m") is None
        assert seen == [("m", Phase.PROMOTED)]
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "END"})
        assert shares(d) == {2: 400}
        assert d.registry.overrides("m").pin is None  # `latest` picks 2 anyway: no pin


async def test_rollback_keeps_stable_and_the_canary_stays_out_at_the_next_scan() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        table = await serving_1_with_2_on_disk(d)
        await d.offer("m", 1, 2)
        table.start(Rollout("m", stable=1, canary=2, weight=0.25))
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        table.rollback("m", "error rate")
        assert shares(d) == {1: 400}  # at once
        await until(lambda: d.states("m") == {2: "END", 1: "AVAILABLE"})
        await d.offer("m", 1, 2)  # the next scan still finds 2: it does not come back
        await d.offer("m", 1, 2)
        assert d.states("m") == {2: "END", 1: "AVAILABLE"} and shares(d) == {1: 400}
        assert d.registry.overrides("m").pin is None
        await d.offer("m", 1, 2, 3)  # a newer version is served as usual
        await until(lambda: d.states("m") == {3: "AVAILABLE", 2: "END", 1: "END"})
        events = table.events("m")
        assert [e["action"] for e in events] == ["rollback", "start"]
        assert events[0]["reason"] == "error rate"


async def test_refusals() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        table = await serving_1_with_2_on_disk(d)
        await d.offer("m", 1, 2)
        with pytest.raises(NotFound, match="Could not find version 7 of model m"):
            table.start(Rollout("m", stable=1, canary=7))
        with pytest.raises(NotFound, match="Could not find any versions of model x"):
            table.start(Rollout("x", stable=1, canary=2))
        with pytest.raises(InvalidArgument, match="both version 1"):
            table.start(Rollout("m", stable=1, canary=1))
        with pytest.raises(InvalidArgument, match="weight must be within"):
            table.start(Rollout("m", stable=1, canary=2, weight=1.5))
        with pytest.raises(FailedPrecondition, match="stable version must be serving"):
            table.start(Rollout("m", stable=2, canary=1))  # 2 is not loaded yet
        with pytest.raises(NotFound, match="no active rollout"):
            table.promote("m")
        with pytest.raises(NotFound, match="has no rollout"):
            table.clear("m")


async def test_hold_default_keeps_a_new_version_off_the_route_until_a_rollout_promotes_it() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        table = await serving_1_with_2_on_disk(d)
        assert table.hold_default("m") == 1
        await d.offer("m", 1, 2)  # published: loads beside 1, takes no traffic
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        assert shares(d) == {1: 400}
        table.start(Rollout("m", stable=1, canary=2, weight=0.5))
        assert set(shares(d)) == {1, 2}
        table.promote("m")
        assert d.registry.overrides("m").pin is None
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "END"})
