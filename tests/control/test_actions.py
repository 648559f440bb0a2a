"""Admin actions racing each other, on a real Registry over scripted loads (no TensorFlow):
what one call takes back must be only what it added."""

from __future__ import annotations

import threading

import anyio

from app.control.actions import AdminActions
from app.core.types import VersionPolicy
from app.errors import FailedPrecondition
from tests.fakes import Driver, Script, ScriptedLoader, model, until

ONLY_3 = VersionPolicy(kind="specific", versions=frozenset({3}))


async def test_a_failed_pin_keeps_a_load_asked_for_while_it_waited() -> None:
    gate = threading.Event()  # version 1 fails to load, once the test lets it
    loader = ScriptedLoader(v1=Script(fail=99, gate=gate))
    async with Driver(loader, max_num_load_retries=0).running() as d:
        d.set_models(model(policy=ONLY_3))
        await d.offer("m", 1, 2, 3)
        await until(lambda: d.states("m").get(3) == "AVAILABLE")
        actions = AdminActions(lambda: d.registry, None)
        outcome: dict[str, object] = {}

        async def pin() -> None:
            try:
                await actions.pin("m", 1, wait=10)
            except FailedPrecondition as exc:
                outcome["pin"] = exc.message

        async def load() -> None:
            outcome["load"] = await actions.load("m", 2, wait=10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pin)
            await until(lambda: d.states("m").get(1) == "LOADING")
            tg.start_soon(load)
            await until(lambda: 2 in d.registry.overrides("m").hold)
            gate.set()
        assert "failed to load" in str(outcome["pin"])
        assert outcome["load"] == "AVAILABLE"
        assert d.registry.overrides("m").hold == {2}
        assert d.states("m")[2] == "AVAILABLE" and d.registry.overrides("m").pin is None
