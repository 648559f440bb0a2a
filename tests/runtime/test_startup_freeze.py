"""The start-up freeze (app.runtime.memory.freeze_startup_objects) comes last in start-up: the
collection after each unload must not walk the gRPC stack or the app's own objects, only what
models add (README "Measured: what each swap does", the garbage collection rows)."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import REPO, free_port

# In a fresh interpreter: this test process froze its own objects in earlier tests, so what is
# tracked here says nothing about the server's start-up order.
_PROBE = """
import asyncio, gc, sys
from app.settings import Settings
from tests.harness import running_app

async def main() -> None:
    settings = Settings(
        model_name="half_plus_two", model_base_path=sys.argv[1], port=int(sys.argv[2])
    )
    async with running_app(settings) as (app, _):
        assert app.state.registry.is_ready()
        tracked = {id(o) for o in gc.get_objects()}
        late = [m for m in ("app.grpc.server", "grpc.aio._server") if id(sys.modules[m]) in tracked]
        print("late:", ",".join(late) or "-", "tracked:", len(tracked))

asyncio.run(main())
"""


def test_grpc_stack_and_app_are_frozen_before_models_load() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO / "models" / "half_plus_two"), str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("late: -"), line  # the gRPC edge's modules are frozen
    # What stays tracked is what the model added (~3.2k here), not also the gRPC stack's and
    # the app's (~9.8k with the freeze at the loader's creation).
    assert int(line.rsplit(" ", 1)[1]) < 6000, line
