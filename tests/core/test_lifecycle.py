"""One model's version lifecycle, fast: a real Registry over the scripted fake loader, fed scan
results by hand. Retries and their cancellation, superseded versions, version policies, the
signature policy (--signature_check), drain time-outs and shutdown."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import anyio
import pytest

from app.core.signatures import SignatureCheck, incompatibility
from app.core.types import Signature, TensorSpec, VersionPolicy, VersionStatus
from tests.fakes import Driver, Script, ScriptedLoader, model, until


def sig(inputs: dict[str, str], outputs: dict[str, str]) -> Signature:
    return Signature(
        name="serving_default",
        method_name="tensorflow/serving/predict",
        inputs={a: TensorSpec(a, d, (-1,)) for a, d in inputs.items()},
        outputs={a: TensorSpec(a, d, (-1,)) for a, d in outputs.items()},
    )


OLD = sig({"x": "DT_FLOAT"}, {"y": "DT_FLOAT"})


def test_same_or_extra_outputs_are_compatible() -> None:
    assert incompatibility(OLD, OLD) is None
    assert incompatibility(OLD, sig({"x": "DT_FLOAT"}, {"y": "DT_FLOAT", "z": "DT_INT64"})) is None


def test_each_breaking_change_says_why() -> None:
    assert incompatibility(OLD, None) == "signature 'serving_default' is missing"
    assert incompatibility(OLD, sig({}, {"y": "DT_FLOAT"})) == (
        "signature 'serving_default' lost input 'x'"
    )
    assert incompatibility(OLD, sig({"x": "DT_INT64"}, {"y": "DT_FLOAT"})) == (
        "signature 'serving_default' input 'x' changed dtype DT_FLOAT -> DT_INT64"
    )
    assert incompatibility(OLD, sig({"x": "DT_FLOAT", "k": "DT_FLOAT"}, {"y": "DT_FLOAT"})) == (
        "signature 'serving_default' requires new inputs ['k']"
    )
    assert incompatibility(OLD, sig({"x": "DT_FLOAT"}, {})) == (
        "signature 'serving_default' lost output 'y'"
    )
    assert incompatibility(OLD, sig({"x": "DT_FLOAT"}, {"y": "DT_DOUBLE"})) == (
        "signature 'serving_default' output 'y' changed dtype DT_FLOAT -> DT_DOUBLE"
    )


# ---- retries ------------------------------------------------------------------------------


async def test_a_failing_load_is_retried_until_it_succeeds() -> None:
    loader = ScriptedLoader(v1=Script(fail=2))
    async with Driver(loader, load_retry_interval_seconds=0.01).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
    assert loader.attempts["1"] == 3


async def test_gives_up_after_the_retries_and_reports_why() -> None:
    loader = ScriptedLoader(v1=Script(fail=99))
    async with Driver(loader, max_num_load_retries=2, load_retry_interval_seconds=0).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "END"})
        st = d.status("m", 1)
        assert (st.error_code, st.error_message) == ("UNKNOWN", "version 1 is broken (attempt 3)")
        await d.offer("m", 1)  # the same files again: not retried
        await anyio.sleep(0.05)  # nothing to wait for: the absence of an attempt is the point
    assert loader.attempts["1"] == 3
    assert d.registry.is_ready()


async def test_a_version_fixed_in_place_is_tried_again() -> None:
    loader = ScriptedLoader(v1=Script(fail=99))
    async with Driver(loader, max_num_load_retries=0).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "END"})
        loader.scripts["1"] = Script()  # files replaced under the same number...
        await d.offer("m", 1, generations={1: 1})  # ...which the scanner reports as generation 1
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
    assert loader.attempts["1"] == 2


async def test_a_retry_wait_holds_nothing_and_the_newer_version_loads_now() -> None:
    loader = ScriptedLoader(v9=Script(fail=99))
    async with Driver(loader).running() as d:  # retries 60 s apart
        d.set_models(model(policy=VersionPolicy("all")))
        await d.offer("m", 8)
        await until(lambda: d.states("m") == {8: "AVAILABLE"})
        await d.offer("m", 8, 9)
        await until(lambda: loader.attempts["9"] == 1)
        await d.offer("m", 8, 9, 10)
        await until(lambda: d.states("m").get(10) == "AVAILABLE")
        assert d.states("m") == {10: "AVAILABLE", 9: "LOADING", 8: "AVAILABLE"}  # 9 still waits
    assert loader.attempts["9"] == 1


async def test_a_superseded_version_stops_retrying_at_once() -> None:
    loader = ScriptedLoader(v9=Script(fail=99))
    async with Driver(loader).running() as d:
        d.set_models(model())  # latest: 10 replaces 9 in the aspired set
        await d.offer("m", 8)
        await until(lambda: d.states("m") == {8: "AVAILABLE"})
        await d.offer("m", 8, 9)
        await until(lambda: loader.attempts["9"] == 1)
        assert d.states("m") == {9: "LOADING", 8: "AVAILABLE"}  # waiting for its retry
        await d.offer("m", 8, 9, 10)
        await until(lambda: d.states("m") == {10: "AVAILABLE", 9: "END", 8: "END"})
        st = d.status("m", 9)
        assert st.error_message == "version 9 is broken (attempt 1) (retries cancelled)"
    assert loader.attempts["9"] == 1


async def test_a_retracted_version_stops_retrying_and_the_old_one_keeps_serving() -> None:
    loader = ScriptedLoader(v2=Script(fail=99))
    async with Driver(loader, load_retry_interval_seconds=0.2).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        await d.offer("m", 1, 2)
        await until(lambda: loader.attempts["2"] == 1)
        await d.offer("m", 1)  # rolled back (moved away) while it waits for its retry
        await until(lambda: d.states("m") == {2: "END", 1: "AVAILABLE"})
        await anyio.sleep(0.3)  # past the retry that would have been due
    assert loader.attempts["2"] == 1


async def test_a_load_superseded_while_running_is_released_when_it_returns() -> None:
    gate = threading.Event()
    loader = ScriptedLoader(v2=Script(gate=gate))
    async with Driver(loader).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        await d.offer("m", 1, 2)
        await until(lambda: loader.attempts["2"] == 1)  # 2 is inside its (blocking) load
        await d.offer("m", 1, 2, 3)
        gate.set()
        await until(lambda: d.states("m") == {3: "AVAILABLE", 2: "END", 1: "END"})
    assert loader.events[:5] == ["load 1", "load 2", "unload 2", "load 3", "unload 1"]


async def test_the_highest_new_version_loads_first() -> None:
    loader = ScriptedLoader()
    async with Driver(loader).running() as d:
        d.set_models(model(policy=VersionPolicy("all")))
        await d.offer("m", 1, 2, 3)
        await until(lambda: set(d.states("m").values()) == {"AVAILABLE"})
    assert loader.events[:3] == ["load 3", "load 2", "load 1"]


async def test_other_models_never_wait_for_a_retry() -> None:
    loader = ScriptedLoader(v1=Script(fail=99))  # every model's version 1 fails
    async with Driver(loader).running() as d:
        d.set_models(model("a"), model("b"))
        await d.offer("a", 1)
        await until(lambda: loader.attempts["1"] == 1)
        await d.offer("b", 2)
        await until(lambda: d.states("b") == {2: "AVAILABLE"})
        assert d.states("a") == {1: "LOADING"}


# ---- version policies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "found", "serving"),
    [
        (VersionPolicy(), (1, 2, 3), {3}),
        (VersionPolicy("latest", num_versions=2), (1, 2, 3), {2, 3}),
        (VersionPolicy("all"), (1, 2, 3), {1, 2, 3}),
        (VersionPolicy("specific", versions=frozenset({1, 3})), (1, 2, 3), {1, 3}),
    ],
)
async def test_policies_pick_the_aspired_versions(
    policy: VersionPolicy, found: tuple[int, ...], serving: set[int]
) -> None:
    async with Driver(ScriptedLoader()).running() as d:
        d.set_models(model(policy=policy))
        await d.offer("m", *found)
        await until(lambda: d.states("m") == {v: "AVAILABLE" for v in serving})
        assert set(d.registry.snapshot.models["m"].versions) == serving


async def test_availability_preserving_loads_before_it_unloads() -> None:
    loader = ScriptedLoader()
    async with Driver(loader).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "END"})
    assert loader.events[:3] == ["load 1", "load 2", "unload 1"]


async def test_resource_preserving_unloads_before_it_loads() -> None:
    loader = ScriptedLoader()
    async with Driver(loader, resource_preserving=True).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "END"})
    assert loader.events[:3] == ["load 1", "unload 1", "load 2"]


async def test_a_failed_new_version_leaves_the_old_one_serving() -> None:
    loader = ScriptedLoader(v2=Script(fail=99))
    async with Driver(loader, max_num_load_retries=0).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m") == {2: "END", 1: "AVAILABLE"})
        with d.registry.acquire("m") as mv:
            assert mv.id.version == 1


# ---- the signature policy -----------------------------------------------------------------

X = {"serving_default": sig({"x": "DT_FLOAT"}, {"y": "DT_FLOAT"})}
FEATURES = {"serving_default": sig({"features": "DT_FLOAT"}, {"y": "DT_FLOAT"})}
TWO = {**X, "other": replace(sig({"z": "DT_FLOAT"}, {"y": "DT_FLOAT"}), name="other")}


@dataclass
class Swap:
    states: dict[int, str]
    v2: VersionStatus
    attempts: int


async def swap(
    check: SignatureCheck, v1: dict[str, Signature], v2: dict[str, Signature], calls: list[str]
) -> Swap:
    """Serve v1, let clients call `calls` on it, publish v2; what happened once v2 settled."""
    loader = ScriptedLoader(v1=Script(signatures=v1), v2=Script(signatures=v2))
    async with Driver(loader, signature_check=check).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        with d.registry.acquire("m") as mv:
            for name in calls:
                mv.mark_used(name)
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m").get(2) in ("AVAILABLE", "END"))
        await until(lambda: d.states("m").get(1) == "END" or d.states("m")[2] == "END")
        return Swap(d.states("m"), d.status("m", 2), loader.attempts["2"])


async def test_used_swaps_when_no_client_called_the_changed_signature() -> None:
    r = await swap("used", X, FEATURES, [])
    assert r.states == {2: "AVAILABLE", 1: "END"}  # TF Serving's answer
    r = await swap("used", TWO, {"other": TWO["other"]}, ["other"])
    assert r.states == {2: "AVAILABLE", 1: "END"}  # serving_default was never called


async def test_used_refuses_a_change_to_a_called_signature_without_retrying() -> None:
    r = await swap("used", X, FEATURES, ["serving_default"])
    assert r.states == {2: "END", 1: "AVAILABLE"}
    st = r.v2
    assert st.error_code == "FAILED_PRECONDITION"
    assert st.error_message.startswith(
        "incompatible with serving version 1: signature 'serving_default' lost input 'x', "
        "which clients called on version 1 (--signature_check=used;"
    )
    assert r.attempts == 1  # with 5 retries allowed: a refusal is deterministic


async def test_all_refuses_without_requests_and_off_swaps_despite_them() -> None:
    r = await swap("all", X, FEATURES, [])
    assert r.states == {2: "END", 1: "AVAILABLE"}
    assert "(--signature_check=all;" in r.v2.error_message
    r = await swap("off", X, FEATURES, ["serving_default"])
    assert r.states == {2: "AVAILABLE", 1: "END"}


async def test_used_signatures_stay_protected_across_compatible_swaps() -> None:
    loader = ScriptedLoader(v3=Script(signatures=FEATURES))
    async with Driver(loader).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        with d.registry.acquire("m") as mv:
            mv.mark_used("serving_default")
        await d.offer("m", 1, 2)  # compatible: takes over, and inherits v1's clients
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "END"})
        await d.offer("m", 1, 2, 3)  # nobody called v2 yet, but v1's clients moved to it
        await until(lambda: d.states("m").get(3) == "END")
        assert d.status("m", 3).error_code == "FAILED_PRECONDITION"


async def test_a_version_loaded_below_the_latest_replaces_nothing() -> None:
    loader = ScriptedLoader(v1=Script(signatures=FEATURES))
    async with Driver(loader, signature_check="all").running() as d:
        d.set_models(model(policy=VersionPolicy("all")))
        await d.offer("m", 2)
        await until(lambda: d.states("m") == {2: "AVAILABLE"})
        await d.offer("m", 1, 2)  # served beside 2 at /versions/1, never as the latest
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})


# ---- drain and shutdown -------------------------------------------------------------------


async def test_drain_waits_for_requests_in_flight() -> None:
    loader = ScriptedLoader()
    async with Driver(loader).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        with d.registry.acquire("m") as old:
            await d.offer("m", 1, 2)
            await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "UNLOADING"})
            with d.registry.acquire("m") as new:
                assert (old.id.version, new.id.version) == (1, 2)
            assert "unload 1" not in loader.events
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "END"})
    assert "unload 1" in loader.events


async def test_a_draining_version_never_holds_up_the_next_load() -> None:
    loader = ScriptedLoader()
    async with Driver(loader, drain_timeout_seconds=30).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        with d.registry.acquire("m"):  # a slow request keeps 1 draining
            await d.offer("m", 1, 2)
            await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "UNLOADING"})
            await d.offer("m", 1, 2, 3)
            await until(lambda: d.states("m") == {3: "AVAILABLE", 2: "END", 1: "UNLOADING"})
        await until(lambda: d.states("m") == {3: "AVAILABLE", 2: "END", 1: "END"})


async def test_a_version_reloaded_while_its_old_copy_drains_keeps_its_new_status() -> None:
    loader = ScriptedLoader()
    async with Driver(loader).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        with d.registry.acquire("m") as old:
            await d.offer("m", 1, 2)
            await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "UNLOADING"})
            await d.offer("m", 1)  # rolled back while the old copy of 1 still drains
            await until(lambda: d.states("m") == {2: "END", 1: "AVAILABLE"})
        await until(lambda: loader.events.count("unload 1") == 1)  # the old copy is gone...
        assert d.states("m") == {2: "END", 1: "AVAILABLE"}  # ...without marking 1 END
        with d.registry.acquire("m") as new:
            assert new is not old and new.id.version == 1


async def test_drain_gives_up_after_its_timeout_and_leaves_the_servable_to_its_holders() -> None:
    loader = ScriptedLoader()
    async with Driver(loader, drain_timeout_seconds=0.1).running() as d:
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
        with d.registry.acquire("m"):
            await d.offer("m", 1, 2)
            await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "END"})
            assert "unload 1" not in loader.events  # never closed under a running request
        # ...and unloaded (its memory given back) once the last holder lets go.
        await until(lambda: "unload 1" in loader.events)
        assert loader.events.count("unload 1") == 1


async def test_shutdown_unloads_everything_and_cancels_retries() -> None:
    loader = ScriptedLoader(v3=Script(fail=99))
    d = Driver(loader)
    async with d.running():
        d.set_models(model(policy=VersionPolicy("all")))
        await d.offer("m", 1, 2)
        await until(lambda: d.states("m") == {2: "AVAILABLE", 1: "AVAILABLE"})
        await d.offer("m", 1, 2, 3)
        await until(lambda: loader.attempts["3"] == 1)
    assert d.states("m") == {3: "END", 2: "END", 1: "END"}
    assert sorted(e for e in loader.events if e.startswith("unload")) == ["unload 1", "unload 2"]
    assert d.registry.snapshot.models == {}
    assert loader.attempts["3"] == 1


async def test_files_changed_during_a_failing_load_are_tried_at_once() -> None:
    gate = threading.Event()
    loader = ScriptedLoader(v1=Script(fail=1, gate=gate))
    async with Driver(loader).running() as d:  # a plain retry would wait 60 s
        d.set_models(model())
        await d.offer("m", 1)
        await until(lambda: loader.attempts["1"] == 1)
        await d.offer("m", 1, generations={1: 1})  # fixed while the broken files were loading
        gate.set()
        await until(lambda: d.states("m") == {1: "AVAILABLE"})
    assert loader.attempts["1"] == 2
