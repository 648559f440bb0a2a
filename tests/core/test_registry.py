"""The manager, fast: routing snapshot and leases, labels, readiness, models removed and added
back, and the status route's view, on a real Registry over the scripted fake loader."""

from __future__ import annotations

import pytest

from app.core.registry import Lease
from app.core.types import VersionPolicy, VersionState, VersionStatus
from app.errors import InvalidArgument, NotFound
from tests.fakes import Driver, Script, ScriptedLoader, model, until

ALL = VersionPolicy("all")


async def test_acquire_resolves_latest_version_and_label() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        d.set_models(model(policy=ALL, labels={"stable": 1}))
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        reg = d.registry
        held = Lease.held
        with reg.acquire("m") as latest, reg.acquire("m", 1) as one:
            assert (latest.id.version, one.id.version) == (2, 1)
            assert (latest.refcount, one.refcount) == (1, 1)
            assert Lease.held == held + 2 and Lease.busy()  # loads are paced meanwhile
        assert (latest.refcount, one.refcount) == (0, 0)
        assert Lease.held == held
        assert Lease.busy()  # for BUSY_LINGER after the last release: requests are coming
        await until(lambda: not Lease.busy())
        with reg.acquire("m", label="stable") as mv:
            assert mv.id.version == 1
        with pytest.raises(NotFound, match=r"Servable not found for request: Specific\(m, 3\)"):
            reg.resolve("m", 3, None)
        with pytest.raises(NotFound, match=r"Servable not found for request: Latest\(nope\)"):
            reg.resolve("nope", None, None)
        with pytest.raises(InvalidArgument, match="Unrecognized servable version label: canary"):
            reg.resolve("m", None, "canary")
        with pytest.raises(NotFound, match="Could not find version 3 of model m"):
            reg.status("m", 3)
        with pytest.raises(NotFound, match="Could not find any versions of model nope"):
            reg.status("nope")


async def test_a_new_label_may_name_a_version_not_loaded_yet() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        d.set_models(model(policy=ALL, labels={"canary": 2}))
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        with pytest.raises(NotFound, match=r"Specific\(m, 2\)"):
            d.registry.resolve("m", None, "canary")  # accepted, answers once 2 is loaded
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m").get(2) == "AVAILABLE")
        assert d.registry.resolve("m", None, "canary").id.version == 2


async def test_a_label_moves_only_once_its_new_target_is_available() -> None:
    loader = ScriptedLoader(v3=Script(fail=99))
    async with Driver(loader, max_num_load_retries=0).running() as d:
        d.set_models(model(policy=ALL, labels={"stable": 1}))
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        d.set_models(model(policy=ALL, labels={"stable": 3}))  # 3 does not exist yet
        assert d.registry.resolve("m", None, "stable").id.version == 1
        await d.offer("m", 1, 2, 3)  # and then fails to load
        await until(lambda: d.states("m").get(3) == "END")
        assert d.registry.resolve("m", None, "stable").id.version == 1
        d.set_models(model(policy=ALL, labels={"stable": 2}))
        assert d.registry.resolve("m", None, "stable").id.version == 2  # 2 is AVAILABLE


async def test_readiness_waits_for_every_model_to_settle() -> None:
    loader = ScriptedLoader(v9=Script(fail=99))
    async with Driver(loader, max_num_load_retries=0).running() as d:
        d.set_models(model("a"), model("b"))
        assert not d.registry.is_ready()
        assert d.registry.readiness() == {
            "a": "waiting for a first complete version",
            "b": "waiting for a first complete version",
        }
        await d.offer("a", 1)
        await d.offer("b", 9)
        await until(d.registry.is_ready)
        assert d.registry.readiness() == {"a": "AVAILABLE [1]", "b": "FAILED"}


async def test_a_removed_model_unloads_and_keeps_its_statuses() -> None:
    loader = ScriptedLoader()
    async with Driver(loader).running() as d:
        d.set_models(model("a"), model("b"))
        await d.offer("a", 1)
        await d.offer("b", 1)
        await until(lambda: d.states("a") == {1: "AVAILABLE"} and d.states("b") == {1: "AVAILABLE"})
        d.set_models(model("b"))
        await until(lambda: d.states("a") == {1: "END"})
        assert "a" not in d.registry.snapshot.models
        assert d.registry.model_names() == ["a", "b"]
        assert d.registry.readiness() == {"b": "AVAILABLE [1]"}
        await d.offer("a", 1, 2)  # a late scan of a removed model changes nothing
        assert d.states("a") == {1: "END"}


async def test_a_model_added_back_never_shares_statuses_with_its_old_state() -> None:
    """The old state's version drains while the new state loads the same version: the old
    state's late END must not overwrite the new state's AVAILABLE (registry.py used to hand the
    new state the old state's very dict)."""
    loader = ScriptedLoader()
    async with Driver(loader).running() as d:
        d.set_models(model("a"))
        await d.offer("a", 1)
        await until(lambda: d.states("a") == {1: "AVAILABLE"})
        with d.registry.acquire("a"):  # keeps the old state's version 1 draining
            d.set_models()
            await until(lambda: d.states("a") == {1: "UNLOADING"})
            d.set_models(model("a"))
            assert d.states("a") == {1: "UNLOADING"}  # the old state's, until the new reports
            await d.offer("a", 1)
            await until(lambda: d.registry.snapshot.models.get("a") is not None)
            await until(lambda: d.states("a") == {1: "AVAILABLE"})
        await until(lambda: loader.events.count("unload 1") == 1)  # the old one is gone...
        assert d.states("a") == {1: "AVAILABLE"}  # ...and the new state's status stands
        with d.registry.acquire("a") as mv:
            assert mv.id.version == 1


async def test_a_model_added_back_shows_its_history_until_it_reports_again() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        d.set_models(model("a"))
        await d.offer("a", 1, 2)
        await until(lambda: d.states("a") == {2: "AVAILABLE"})
        d.set_models()
        await until(lambda: d.states("a") == {2: "END"})
        d.set_models(model("a"))
        assert d.states("a") == {2: "END"}
        await d.offer("a", 3)
        await until(lambda: d.states("a") == {3: "AVAILABLE", 2: "END"})


async def test_status_is_a_copy() -> None:
    async with Driver(ScriptedLoader()).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        got = d.registry.status("m")
        got.append(VersionStatus(7, VersionState.END))
        assert d.registry.status("m") == [VersionStatus(1, VersionState.AVAILABLE)]


async def test_close_drains_unloads_and_empties_the_snapshot() -> None:
    loader = ScriptedLoader()
    d = Driver(loader)
    async with d.running():
        d.set_models(model("a"), model("b", policy=ALL))
        await d.offer("a", 1)
        await d.offer("b", 1, 2)
        await until(lambda: d.states("a") == {1: "AVAILABLE"})
        await until(lambda: d.states("b") == {2: "AVAILABLE", 1: "AVAILABLE"})
    assert d.registry.snapshot.models == {}
    unloads = sorted(e for e in loader.events if e.startswith("unload"))
    assert unloads == ["unload 1", "unload 1", "unload 2"]
    assert d.states("a") == {1: "END"} and d.states("b") == {2: "END", 1: "END"}


async def test_close_also_unloads_a_removed_state_still_draining_after_a_re_add() -> None:
    d = Driver(ScriptedLoader(), drain_timeout_seconds=0.2)
    async with d.running():
        d.set_models(model("a"))
        await d.offer("a", 1)
        await until(lambda: d.states("a") == {1: "AVAILABLE"})
        lease = d.registry.acquire("a")
        lease.__enter__()  # a request that outlives the removal, the re-add and the shutdown
        d.set_models()
        await until(lambda: d.states("a") == {1: "UNLOADING"})
        d.set_models(model("a"))  # the new state has loaded nothing: the old one's 1 shows
    lease.__exit__(None, None, None)
    assert d.states("a") == {1: "END"}  # the shutdown reached the old state too
