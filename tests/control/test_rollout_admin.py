"""The admin API's rollout routes in process (real TensorFlow versions, httpx ASGITransport):
start, change live, pause/resume, promote, rollback, and every refusal with TF-Serving-style
errors; the status document's rollout section. FAILED_PRECONDITION answers 400, as everywhere
in hotserve's HTTP (TF Serving's mapping, app.api.errors), not 409."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from app.settings import Settings
from tests.control.conftest import broken, publish
from tests.control.test_admin import AUTH, TOKEN, _settings
from tests.harness import models_config, running_app
from tests.integration.conftest import version_of

ROLLOUT = "/admin/v1/models/m/rollout"


async def shares(client: httpx.AsyncClient, n: int = 200) -> Counter[int]:
    got: Counter[int] = Counter()
    for _ in range(n):
        r = await client.post("/v1/models/m:predict", json={"instances": [4.0]})
        assert r.status_code == 200, r.text
        got[version_of(r.json()["predictions"], [4.0])] += 1
    return got


async def states(client: httpx.AsyncClient) -> dict[int, str]:
    r = await client.get("/v1/models/m")
    return {int(s["version"]): s["state"] for s in r.json()["model_version_status"]}


async def until_states(
    client: httpx.AsyncClient, want: dict[int, str], timeout: float = 60
) -> None:
    with anyio.fail_after(timeout):
        while await states(client) != want:
            await anyio.sleep(0.05)


@pytest.fixture
async def pinned(
    version_library: Path, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Path]]:
    """Version 1 serving and pinned, version 2 published and loaded beside it (`latest`)."""
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1)
    async with running_app(_settings(base)) as (app, client):
        r = await client.put("/admin/v1/models/m/pin", json={"version": 1}, headers=AUTH)
        assert r.status_code == 200, r.text
        publish(version_library, base, 2)
        await until_states(client, {2: "AVAILABLE", 1: "AVAILABLE"})
        yield app, client, base


async def test_start_change_pause_resume_and_promote(
    pinned: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    app, client, _ = pinned
    r = await client.put(ROLLOUT, json={"canary": 2, "canary_percent": 0}, headers=AUTH)
    assert r.status_code == 200, r.text
    ro = r.json()["rollout"]
    assert (ro["stable"], ro["canary"], ro["canary_percent"], ro["phase"]) == (1, 2, 0, "shadow")
    assert await shares(client, 50) == {1: 50}
    r = await client.put(
        ROLLOUT, json={"canary": 2, "canary_percent": 100, "automatic": False}, headers=AUTH
    )
    assert r.json()["rollout"]["phase"] == "canary"
    assert await shares(client, 50) == {2: 50}  # live, no restart
    r = await client.post(f"{ROLLOUT}/pause", json={"reason": "looking"}, headers=AUTH)
    assert (r.json()["rollout"]["phase"], r.json()["rollout"]["reason"]) == ("paused", "looking")
    r = await client.post(f"{ROLLOUT}/resume", headers=AUTH)
    assert r.json()["rollout"]["phase"] == "canary"
    doc = (await client.get("/admin/v1/status", headers=AUTH)).json()
    section = doc["models"][0]["rollout"]
    assert section["rollout"]["canary_percent"] == 100
    assert [e["action"] for e in section["events"]][:2] == ["resume", "pause"]
    r = await client.post(f"{ROLLOUT}/promote", json={"reason": "good"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["rollout"]["phase"] == "promoted"
    await until_states(client, {2: "AVAILABLE", 1: "END"})  # stable released: `latest` unloads it
    assert await shares(client, 20) == {2: 20}
    r = await client.get(ROLLOUT, headers=AUTH)
    assert r.json()["rollout"]["reason"] == "good"
    assert app.state.rollouts.active("m") is None


async def test_rollback_keeps_stable_and_the_canary_does_not_come_back(
    pinned: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    _, client, base = pinned
    r = await client.put(
        ROLLOUT, json={"stable": 1, "canary": 2, "canary_percent": 50}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    got = await shares(client)
    assert got[1] > 40 and got[2] > 40
    r = await client.post(f"{ROLLOUT}/rollback", json={"reason": "errors"}, headers=AUTH)
    assert r.json()["rollout"]["phase"] == "rolled_back"
    assert await shares(client, 50) == {1: 50}  # at once
    await until_states(client, {2: "END", 1: "AVAILABLE"})
    (base / "2" / "touched").write_text("")  # a few scans later (1 s polling), still out
    await anyio.sleep(2.5)
    assert await states(client) == {2: "END", 1: "AVAILABLE"}
    assert await shares(client, 20) == {1: 20}


async def test_refusals(pinned: tuple[FastAPI, httpx.AsyncClient, Path]) -> None:
    app, client, base = pinned

    async def put(body: object, path: str = ROLLOUT) -> tuple[int, str]:
        r = await client.put(path, json=body, headers=AUTH)
        return r.status_code, r.json().get("error", "")

    assert (await put({"canary": 2, "canary_percent": 150}))[0] == 400
    assert (await put({"canary": 2, "bogus": 1}))[0] == 400
    assert await put({"canary": "nope"}) == (400, "Unrecognized servable version label: nope")
    assert await put({"canary": 9}) == (404, "Could not find version 9 of model m")
    code, error = await put({"canary": 2}, "/admin/v1/models/x/rollout")
    assert (code, error) == (404, "Could not find any versions of model x")
    assert (await put({"stable": 2, "canary": 2}))[0] == 400
    broken(base, 3)
    await anyio.sleep(1.5)  # found by a scan (it fails to load; 1 stays pinned)
    code, error = await put({"stable": 3, "canary": 2})
    assert code == 400 and "stable version must be serving" in error  # FAILED_PRECONDITION
    r = await client.post(f"{ROLLOUT}/promote", headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (404, "Model m has no active rollout")
    assert (await client.get(ROLLOUT, headers=AUTH)).status_code == 404
    assert (await client.put(ROLLOUT, json={"canary": 2})).status_code == 401  # locked
    assert (await put({"canary": 3, "canary_percent": 50}))[0] == 200  # 3 cannot load ...
    assert await shares(client, 30) == {1: 30}  # ... so the default route stays on stable
    r = await client.post(f"{ROLLOUT}/promote", headers=AUTH)
    assert r.status_code == 400 and "not AVAILABLE" in r.json()["error"]
    app.state.publish_gate = object()  # what app.worker sets in each --workers process
    code, error = await put({"canary": 2})
    assert code == 400 and "--workers > 1" in error
    assert (await client.get(ROLLOUT, headers=AUTH)).status_code == 200  # reads still answer
    app.state.publish_gate = None


async def test_a_model_removed_from_models_config_and_added_back_does_not_keep_a_ghost_rollout(
    version_library: Path, tmp_path: Path
) -> None:
    """A rollout belongs to the model's state: removing the model from models.config ends it
    (core forgets the split with the retired state), so the table must not go on reporting an
    active 50% split that routes nothing; the rollout file's entry applies again once the
    model is back."""
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1, 2)
    config = tmp_path / "models.config"
    with_m = models_config({"m": str(base)})
    config.write_text(with_m)
    (tmp_path / "other").mkdir()
    publish(version_library, tmp_path / "other", 1)
    rollouts = tmp_path / "rollouts.json"
    entry = {"stable": 1, "canary": 2, "canary_percent": 50, "automatic": False}
    rollouts.write_text(json.dumps({"models": {"m": {"rollout": entry}}}))
    settings = Settings(
        model_config_file=str(config),
        model_config_file_poll_wait_seconds=3600,  # only the admin call re-reads it
        rollout_config_file=str(rollouts),
        rollout_config_poll_wait_seconds=0.2,
        version_settle_seconds=0,
        file_system_poll_wait_seconds=1,
        admin_token=TOKEN,
    )
    async with running_app(settings) as (app, client):
        await until_states(client, {2: "AVAILABLE", 1: "AVAILABLE"})
        got = await shares(client, 100)
        assert got[1] > 15 and got[2] > 15
        config.write_text(models_config({"other": str(tmp_path / "other")}))
        r = await client.post("/admin/v1/config/reload", headers=AUTH)
        assert r.status_code == 200, r.text
        assert app.state.rollouts.active("m") is None  # no ghost of the retired model's split
        config.write_text(with_m)
        r = await client.post("/admin/v1/config/reload", headers=AUTH)
        assert r.status_code == 200, r.text
        await until_states(client, {2: "AVAILABLE", 1: "AVAILABLE"})  # the file applies again
        ro = app.state.rollouts.active("m")
        assert ro is not None and (ro.stable, ro.canary, ro.weight) == (1, 2, 0.5)
        got = await shares(client, 100)
        assert got[1] > 15 and got[2] > 15


async def test_removing_a_rolled_back_rollout_returns_the_route_to_the_version_policy(
    version_library: Path, tmp_path: Path
) -> None:
    """A rollback while a version newer than the canary is on disk pins stable (else `latest`
    would route to the newer one at once). Forgetting the rollout (file entry removed: the only
    way under --workers, where the admin API refuses changes) must lift that pin, as the README
    says ("back to the version policy"), so a version published later is served as usual."""
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1, 2)
    rollouts = tmp_path / "rollouts.json"
    entry = {"stable": 1, "canary": 2, "canary_percent": 50, "automatic": False}
    rollouts.write_text(json.dumps({"models": {"m": {"rollout": entry}}}))
    settings = _settings(
        base, rollout_config_file=str(rollouts), rollout_config_poll_wait_seconds=0.2
    )
    async with running_app(settings) as (app, client):
        await until_states(client, {2: "AVAILABLE", 1: "AVAILABLE"})
        publish(version_library, base, 3)
        await until_states(client, {3: "AVAILABLE", 2: "AVAILABLE", 1: "AVAILABLE"})
        got = await shares(client, 60)
        assert set(got) == {1, 2}  # the split decides, not `latest`
        entry["phase"] = "rolled_back"
        rollouts.write_text(json.dumps({"models": {"m": {"rollout": entry}}}))
        await until_states(client, {3: "AVAILABLE", 2: "END", 1: "AVAILABLE"})
        assert await shares(client, 20) == {1: 20}  # stable keeps the route
        rollouts.write_text(json.dumps({"models": {}}))  # forget it: version policy again
        await until_states(client, {3: "AVAILABLE", 2: "END", 1: "END"})
        assert await shares(client, 20) == {3: 20}
        publish(version_library, base, 4)
        await until_states(client, {4: "AVAILABLE", 3: "END", 2: "END", 1: "END"})
        assert await shares(client, 20) == {4: 20}
        assert app.state.registry.overrides("m").pin is None


async def test_a_rolled_back_file_entry_still_holds_after_a_restart(
    version_library: Path, tmp_path: Path
) -> None:
    """The rollout file is what survives a restart (or a restarted --workers process): an entry
    that says the rollout was rolled back must keep the canary out and stable serving, not let
    `latest` hand the bad version the whole default route because no rollout is active yet."""
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1, 2)
    rollouts = tmp_path / "rollouts.json"
    entry = {"stable": 1, "canary": 2, "canary_percent": 50, "phase": "rolled_back"}
    rollouts.write_text(json.dumps({"models": {"m": {"rollout": entry}}}))
    settings = _settings(
        base, rollout_config_file=str(rollouts), rollout_config_poll_wait_seconds=0.2
    )
    async with running_app(settings) as (app, client):  # the server's (re)start
        await until_states(client, {2: "END", 1: "AVAILABLE"})
        assert await shares(client, 20) == {1: 20}
        ro = app.state.rollouts.get("m")
        assert ro is not None and ro.phase.value == "rolled_back"
        (base / "2" / "touched").write_text("")  # later scans: still out
        await anyio.sleep(2.5)
        assert await states(client) == {2: "END", 1: "AVAILABLE"}


async def test_a_rolled_back_file_entry_after_a_restart_does_not_hide_a_newer_version(
    version_library: Path, tmp_path: Path
) -> None:
    """After the restart, a version published since the rollback (3) keeps serving: the old
    entry withdraws its canary (2) and pins nothing."""
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1, 2, 3)
    rollouts = tmp_path / "rollouts.json"
    entry = {"stable": 1, "canary": 2, "canary_percent": 50, "phase": "rolled_back"}
    rollouts.write_text(json.dumps({"models": {"m": {"rollout": entry}}}))
    settings = _settings(
        base, rollout_config_file=str(rollouts), rollout_config_poll_wait_seconds=0.2
    )
    async with running_app(settings) as (app, client):

        async def applied() -> bool:
            return app.state.rollouts.get("m") is not None

        with anyio.fail_after(30):
            while not await applied():
                await anyio.sleep(0.05)
        assert await states(client) == {3: "AVAILABLE"}  # 1 and 2 were never loaded
        assert await shares(client, 20) == {3: 20}
        assert app.state.registry.overrides("m").pin is None
