"""Review of issue 11's analysis and shadow traffic: attacks over a real server (one per module,
tests/rollout/conftest.py) and the pure parts in-process."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import anyio
import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from app.core.types import VersionState, VersionStatus
from app.publish import publish
from app.rollout.analysis import CANARY
from app.rollout.config import RolloutBody
from app.rollout.controller import RolloutController
from app.rollout.divergence import compare
from app.rollout.shadow import RolloutTap
from app.rollout.spec import Policy, Rollout
from tests.rollout.conftest import (
    TOKEN,
    Load,
    RolloutServer,
    phase,
    sample,
    versions,
    wait_phase,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BAD_REGRESS = {"signature_name": "regress_x_to_y", "examples": [{"z": 1.0}]}  # no feature x


async def test_client_bad_input_on_the_canary_is_not_a_canary_error(
    rollout_server: RolloutServer,
) -> None:
    """A request the model rejects because of its input (a tf.Example without the feature the
    model parses: 400 on any version) must not count against a healthy canary: 20 such requests
    at 50% leave version 2's rollout running, its window with no canary error."""
    srv = rollout_server
    srv.set_rollout(
        "healthy",
        {"stable": 1, "canary": 2, "canary_percent": 50, "steps": [50, 100],
         "step_seconds": 3600, "window_seconds": 30,
         "thresholds": {"min_requests": 20, "max_error_rate_increase": 0.01,
                        "max_p99_ratio": 50}},
    )  # fmt: skip
    await wait_phase(srv, "healthy", "canary")
    async with httpx.AsyncClient(timeout=30) as c:
        for _ in range(20):
            r = await c.post(f"{srv.url}/v1/models/healthy:regress", json=BAD_REGRESS)
            assert r.status_code == 400, r.text
    load = Load(f"{srv.url}/v1/models/healthy:predict")
    await load.run_for(1.5)  # good traffic: several controller evaluations (every 0.2 s)
    assert not load.failures, load.failures[:3]
    assert phase(srv, "healthy") == "canary", srv.proc.log()[-600:]
    text = srv.metrics()
    assert (sample(text, "hotserve_rollout_window_requests", model="healthy", arm="canary")
            or 0) > 0  # fmt: skip
    assert sample(text, "hotserve_rollout_window_errors", model="healthy", arm="canary") == 0


# ---- in-process: the divergence, the window's bound, the controller's robustness ----------


def test_equal_infinities_do_not_diverge() -> None:
    """A model may answer +-inf (log(0)); the canary answering the same is no divergence."""
    p = {"y": np.asarray([np.inf, -np.inf, 1.0, np.nan], np.float32)}
    assert compare(p, {"y": p["y"].copy()}).max_abs_diff == 0.0
    near = {"y": np.asarray([np.inf, -np.inf, 1.5, np.nan], np.float32)}
    assert compare(p, near).max_abs_diff == 0.5
    assert compare(p, {"y": np.asarray([np.inf, np.inf, 1.0, np.nan], np.float32)}).max_abs_diff \
        == math.inf  # fmt: skip
    assert compare(p, {"y": np.asarray([1.0, -np.inf, 1.0, np.nan], np.float32)}).max_abs_diff \
        == math.inf  # fmt: skip


def test_an_analysis_window_is_bounded() -> None:
    """window_seconds sizes per-second buckets summed on the loop at every evaluation: a day
    (86400) cost 139 MB and a 1.7 s snapshot per tick, blocking the event loop; refused."""
    with pytest.raises(ValidationError):
        RolloutBody.model_validate({"stable": 1, "canary": 2, "window_seconds": 86400})
    assert RolloutBody.model_validate({"stable": 1, "canary": 2, "window_seconds": 3600})


class FakeTable:
    """What the controller reads and calls on the table (app.rollout.table.RolloutTable)."""

    def __init__(self, rollouts: dict[str, Rollout]) -> None:
        self.rollouts = rollouts
        self.policies: dict[str, Policy] = {}
        self.rolled_back: list[str] = []
        self.started: list[Rollout] = []

    def add_listener(self, listener: object) -> None:
        pass

    def rollback(self, model: str, reason: str, source: str = "admin") -> None:
        self.rolled_back.append(model)

    def start(self, rollout: Rollout, source: str = "admin") -> Rollout:
        self.started.append(rollout)
        raise RuntimeError("a bug in start")


def test_a_bug_in_one_models_evaluation_does_not_stop_the_others() -> None:
    """Model `a`'s analysis raises: `b`, failing every canary request, is still rolled back
    in the same evaluation (the whole tick used to end at `a`, every tick)."""
    rollouts = {m: Rollout(m, 1, 2, weight=0.5) for m in ("a", "b")}
    table = FakeTable(rollouts)
    tap = RolloutTap(lambda: None)  # type: ignore[arg-type,return-value]
    controller = RolloutController(table, tap, lambda: None)  # type: ignore[arg-type,return-value]
    assert set(tap.taps) == {"a", "b"}

    def broken(now: float | None = None) -> object:
        raise RuntimeError("a bug in the analysis")

    tap.taps["a"].analysis.snapshot = broken  # type: ignore[method-assign]
    for _ in range(10):
        tap.taps["b"].analysis.record(CANARY, 0.001, False)
    controller.tick()
    assert table.rolled_back == ["b"]


async def test_a_bug_entering_one_publication_does_not_stop_auto_enter() -> None:
    """`enter` raising something else than a domain error must not end the controller (its task
    group is the lifespan's: the server would stop) nor the auto-enter of later versions."""
    table = FakeTable({})
    table.policies["m"] = Policy("m", "rollout")
    route = SimpleNamespace(latest=SimpleNamespace(id=SimpleNamespace(version=1)))
    registry = SimpleNamespace(snapshot=SimpleNamespace(models={"m": route}))
    tap = RolloutTap(lambda: registry)  # type: ignore[arg-type,return-value]
    controller = RolloutController(table, tap, lambda: registry, interval=0.05)  # type: ignore[arg-type,return-value]
    async with anyio.create_task_group() as tg:
        await tg.start(controller.run)
        controller.version_state("m", VersionStatus(2, VersionState.LOADING))
        with anyio.fail_after(10):
            while len(table.started) < 1:
                await anyio.sleep(0.01)
        controller.version_state("m", VersionStatus(3, VersionState.LOADING))
        with anyio.fail_after(10):
            while len(table.started) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert [r.canary for r in table.started] == [2, 3]


async def test_a_published_version_that_fails_to_load_does_not_hold_the_model_forever(
    rollout_server: RolloutServer, library: Path, tmp_path: Path
) -> None:
    """`auto` opts in with on_publish "rollout"; version 5 is published broken (its
    saved_model.pb is garbage: the load fails, not retried). Its rollout must not sit in CANARY
    forever with version 1 pinned (no canary sample ever comes, so no verdict ever comes, and a
    rollout running blocks auto-enter of the fix): it is rolled back, and version 6 (good)
    published after it enters a rollout of its own and is promoted."""
    srv = rollout_server
    limits = {"min_requests": 10, "max_p99_ratio": 50}
    template = {"canary_percent": 10, "steps": [10, 100], "step_seconds": 1,
                "window_seconds": 2, "thresholds": limits}  # fmt: skip
    srv.write("auto", {"policy": {"on_publish": "rollout", "template": template}})
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    load = Load(f"{srv.url}/v1/models/auto:predict")
    async with anyio.create_task_group() as tg:
        tg.start_soon(load.run_for, 600.0)
        with anyio.fail_after(10):  # the policy is read (0.2 s polls)
            while "auto" not in httpx.get(f"{srv.url}/admin/v1/rollouts", headers=AUTH).text:
                await anyio.sleep(0.1)
        await anyio.to_thread.run_sync(publish, broken, srv.base, 5)
        await wait_phase(srv, "auto", "rolled_back", timeout=30)
        await anyio.to_thread.run_sync(publish, library / "2", srv.base, 6)
        with anyio.fail_after(60):
            while True:
                doc = httpx.get(f"{srv.url}/admin/v1/models/auto", headers=AUTH).json()
                ro = (doc.get("rollout") or {}).get("rollout") or {}
                if ro.get("canary") == 6 and ro.get("phase") == "promoted":
                    break
                await anyio.sleep(0.1)
        promoted = time.monotonic()
        await anyio.sleep(1.0)
        load.stop = True
    assert not load.failures, load.failures[:3]
    assert set(versions(load, since=promoted + 0.3)) == {2}  # version 6 answers 0.5x + 2
