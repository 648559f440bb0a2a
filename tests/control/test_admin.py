"""The admin API in process (real TensorFlow versions): the token guard and the safety rules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from app.cli import UsageError, parse_flags
from app.control.admin import admin_token
from app.errors import ConfigError
from app.settings import Settings
from tests.control.conftest import TOKEN, broken, publish
from tests.harness import models_config, running_app
from tests.integration.conftest import version_of

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(base: Path, **more: object) -> Settings:
    options: dict[str, object] = {
        "model_name": "m",
        "model_base_path": str(base),
        "version_settle_seconds": 0,
        "file_system_poll_wait_seconds": 1,
        "max_num_load_retries": 0,
        "admin_token": TOKEN,
        **more,
    }
    return Settings(**options)  # type: ignore[arg-type]


@pytest.fixture
async def served(
    version_library: Path, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Path]]:
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1, 2)
    async with running_app(_settings(base)) as (app, client):
        yield app, client, base


async def _served_version(client: httpx.AsyncClient, path: str = "/v1/models/m:predict") -> int:
    r = await client.post(path, json={"instances": [4.0]})
    assert r.status_code == 200, r.text
    return version_of(r.json()["predictions"], [4.0])


async def _until(condition: object, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not await condition():  # type: ignore[operator]
            await anyio.sleep(0.05)


async def _until_failed(app: FastAPI, version: int) -> None:
    """Until `version` of model m ended (a broken version gave up loading)."""

    async def ended() -> bool:
        statuses = {s.version: s for s in app.state.registry.status("m")}
        return version in statuses and statuses[version].state.value == "END"

    await _until(ended)


# ---- security ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"Authorization": f"bearer{TOKEN}"},
        {"Authorization": "Bearer \u00e9\u00e9\u00e9".encode("latin-1")},  # type: ignore[dict-item]
    ],
    ids=["missing", "wrong", "longer", "basic", "no-scheme", "empty", "bare", "no-space", "latin1"],
)
async def test_missing_wrong_and_malformed_tokens_get_401_without_detail(
    served: tuple[FastAPI, httpx.AsyncClient, Path], headers: dict[str, str | bytes]
) -> None:
    app, client, _ = served
    for method, path in [
        ("GET", "/admin/v1/status"),
        ("PUT", "/admin/v1/models/m/pin"),
        ("POST", "/admin/v1/models/m/versions/1/unload?force=true"),
        ("GET", "/admin/v1/no-such-route"),
        ("POST", "/admin/v1/models/%2e%2e/versions/x/load"),
    ]:
        r = await client.request(method, path, headers=headers, json={"version": 1})
        assert r.status_code == 401, (method, path, r.text)
        assert r.json() == {"error": "Unauthorized"}
        assert r.headers["www-authenticate"] == "Bearer"
    assert app.state.registry.snapshot.models["m"].latest.id.version == 2  # nothing changed


async def test_two_authorization_headers_are_refused(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")]
    r = await client.get("/admin/v1/status", headers=headers)
    assert r.status_code == 401


async def test_a_root_path_does_not_open_the_admin_api(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    """Behind `uvicorn --root-path /api` a request for /admin/v1/... arrives with the root path
    in front; the router strips it, so the guard must too."""
    app, _, _ = served
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://hotserve") as client:
        r = await client.get("/api/admin/v1/status")
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        r = await client.post("/api/admin/v1/models/m/versions/2/unload?force=true")
        assert r.status_code == 401
        r = await client.get("/api/admin/v1/status", headers=AUTH)
        assert r.status_code == 200 and r.json()["models"][0]["name"] == "m"
    assert app.state.registry.snapshot.models["m"].latest.id.version == 2  # nothing changed


async def test_admin_api_is_off_without_a_token(version_library: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1)
    async with running_app(_settings(base, admin_token="")) as (_, client):
        r = await client.get("/admin/v1/status", headers=AUTH)
        assert r.status_code == 404
        spec = (await client.get("/openapi.json")).json()
        assert not [p for p in spec["paths"] if p.startswith("/admin")]


def test_token_sources_and_rules(tmp_path: Path) -> None:
    assert admin_token(Settings(admin_token="")) is None
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert admin_token(Settings(admin_token_file=str(token_file))) == TOKEN
    with pytest.raises(ConfigError, match="at least 16"):
        admin_token(Settings(admin_token="short"))
    with pytest.raises(ConfigError, match="Cannot read"):
        admin_token(Settings(admin_token_file=str(tmp_path / "missing")))
    with pytest.raises(UsageError, match="unknown flag"):  # never on the command line (`ps`)
        parse_flags([f"--admin_token={TOKEN}"])
    assert TOKEN not in repr(Settings(admin_token=TOKEN))


async def test_the_admin_routes_are_in_the_openapi_page_with_bearer_auth(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    spec = (await client.get("/openapi.json")).json()
    admin = [p for p in spec["paths"] if p.startswith("/admin/v1/")]
    assert "/admin/v1/models/{name}/pin" in admin and "/admin/v1/config/reload" in admin
    assert not [p for p in admin if p.startswith("/v1")]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


@pytest.mark.parametrize("body", [b'{"version": "1"}', b'{"version": true}', b'{"version": -1}'])
async def test_a_version_body_must_be_a_whole_number(
    served: tuple[FastAPI, httpx.AsyncClient, Path], body: bytes
) -> None:
    _, client, _ = served
    headers = {**AUTH, "Content-Type": "application/json"}
    r = await client.put("/admin/v1/models/m/pin", headers=headers, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("Invalid request: body.version: ")
    doc = (await client.get("/admin/v1/models/m", headers=AUTH)).json()
    assert doc["pinned_version"] is None


async def test_validation_errors_do_not_echo_the_input(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    long_label = "x" * 300
    r = await client.delete(f"/admin/v1/models/m/labels/{long_label}", headers=AUTH)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error == "Invalid request: path.label: String should have at most 256 characters"
    assert long_label not in error


# ---- listing ------------------------------------------------------------------------------


async def test_listing_has_states_durations_in_flight_and_events(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    await _served_version(client)
    doc = (await client.get("/admin/v1/models/m", headers=AUTH)).json()
    assert doc["default_version"] == 2 and doc["pinned_version"] is None
    v2 = next(v for v in doc["versions"] if v["version"] == 2)
    assert v2["state"] == "AVAILABLE" and v2["default"] and v2["in_flight"] == 0
    assert v2["load_seconds"] > 0 and v2["warmup_seconds"] >= 0
    states = [(e["version"], e["state"]) for e in doc["events"]]
    assert (2, "AVAILABLE") in states and (2, "LOADING") in states
    available = next(e for e in doc["events"] if e["state"] == "AVAILABLE")
    assert "load_seconds" in available
    everything = (await client.get("/admin/v1/status", headers=AUTH)).json()
    assert [m["name"] for m in everything["models"]] == ["m"] and everything["ready"]
    missing = await client.get("/admin/v1/models/nope", headers=AUTH)
    assert missing.status_code == 404 and "error" in missing.json()


# ---- pins ---------------------------------------------------------------------------------


async def test_pin_loads_an_older_version_routes_to_it_and_survives_scans(
    served: tuple[FastAPI, httpx.AsyncClient, Path], version_library: Path
) -> None:
    app, client, base = served
    assert await _served_version(client) == 2
    r = await client.put("/admin/v1/models/m/pin", headers=AUTH, json={"version": 1})
    assert r.status_code == 200, r.text
    assert await _served_version(client) == 1
    publish(version_library, base, 3)  # a later scan finds 3: it loads, the pin holds

    async def three_loaded() -> bool:
        return 3 in app.state.registry.snapshot.models["m"].versions

    await _until(three_loaded)
    assert await _served_version(client) == 1
    assert await _served_version(client, "/v1/models/m/versions/3:predict") == 3
    r = await client.delete("/admin/v1/models/m/pin", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"unpinned": 1}
    assert await _served_version(client) == 3


async def test_a_pin_to_a_version_that_fails_to_load_leaves_serving_untouched(
    served: tuple[FastAPI, httpx.AsyncClient, Path], caplog: pytest.LogCaptureFixture
) -> None:
    app, client, base = served
    broken(base, 7)
    await _until_failed(app, 7)
    caplog.set_level(logging.INFO, logger="app.control.admin")
    r = await client.put("/admin/v1/models/m/pin", headers=AUTH, json={"version": 7})
    assert r.status_code == 400 and "failed to load" in r.json()["error"]
    assert await _served_version(client) == 2
    doc = (await client.get("/admin/v1/models/m", headers=AUTH)).json()
    assert doc["pinned_version"] is None
    assert any("pin model m to version 7 refused" in m for m in caplog.messages)
    assert any("127.0.0.1" in m or "testclient" in m or ":" in m for m in caplog.messages)
    r = await client.put("/admin/v1/models/m/pin", headers=AUTH, json={"version": 99})
    assert r.status_code == 404


# ---- labels -------------------------------------------------------------------------------


async def test_a_label_moves_only_to_an_available_version(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    r = await client.put("/admin/v1/models/m/labels/stable", headers=AUTH, json={"version": 9})
    assert r.status_code == 400 and "AVAILABLE" in r.json()["error"]
    r = await client.put("/admin/v1/models/m/labels/stable", headers=AUTH, json={"version": 1})
    assert r.status_code == 400  # 1 is on disk but not loaded (policy: latest)
    r = await client.post("/admin/v1/models/m/versions/1/load", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"state": "AVAILABLE"}
    r = await client.put("/admin/v1/models/m/labels/stable", headers=AUTH, json={"version": 1})
    assert r.status_code == 200
    assert await _served_version(client, "/v1/models/m/labels/stable:predict") == 1
    r = await client.put("/admin/v1/models/m/labels/stable", headers=AUTH, json={"version": 2})
    assert await _served_version(client, "/v1/models/m/labels/stable:predict") == 2
    r = await client.delete("/admin/v1/models/m/labels/stable", headers=AUTH)
    assert r.status_code == 200
    r = await client.post("/v1/models/m/labels/stable:predict", json={"instances": [1.0]})
    assert r.status_code == 400 and "label" in r.json()["error"]
    r = await client.delete("/admin/v1/models/m/labels/stable", headers=AUTH)
    assert r.status_code == 404


# ---- load / unload ------------------------------------------------------------------------


async def test_unloading_the_last_serving_version_needs_force(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    app, client, _ = served
    r = await client.post("/admin/v1/models/m/versions/2/unload", headers=AUTH)
    assert r.status_code == 400 and "force" in r.json()["error"]
    assert await _served_version(client) == 2
    r = await client.post("/admin/v1/models/m/versions/1/load", headers=AUTH)
    assert r.status_code == 200
    r = await client.post("/admin/v1/models/m/versions/2/unload", headers=AUTH)
    assert r.status_code == 200  # 1 still serves

    async def only_one() -> bool:
        return set(app.state.registry.snapshot.models["m"].versions) == {1}

    await _until(only_one)
    assert await _served_version(client) == 1
    r = await client.post("/admin/v1/models/m/versions/1/unload?force=true", headers=AUTH)
    assert r.status_code == 200

    async def none_left() -> bool:
        route = app.state.registry.snapshot.models.get("m")
        return route is None or not route.versions

    await _until(none_left)
    r = await client.post("/v1/models/m:predict", json={"instances": [1.0]})
    assert r.status_code == 404
    r = await client.post("/admin/v1/models/m/versions/2/load", headers=AUTH)
    assert r.status_code == 200 and await _served_version(client) == 2


async def test_unloading_every_version_at_once_still_needs_force(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    """A version being unloaded (UNLOADING, or excluded but not yet taken out of the routes)
    does not count as serving: two unloads sent together cannot empty the model without
    force."""
    app, client, _ = served
    r = await client.post("/admin/v1/models/m/versions/1/load", headers=AUTH)
    assert r.status_code == 200
    for _ in range(3):
        answers = await asyncio.gather(
            client.post("/admin/v1/models/m/versions/1/unload", headers=AUTH),
            client.post("/admin/v1/models/m/versions/2/unload", headers=AUTH),
        )
        assert sorted(a.status_code for a in answers) == [200, 400], [a.text for a in answers]
        assert "force" in next(a for a in answers if a.status_code == 400).json()["error"]
        assert app.state.registry.snapshot.models["m"].versions  # something still serves
        assert await _served_version(client) in (1, 2)
        for v in (1, 2):  # serve both again for the next round
            r = await client.post(f"/admin/v1/models/m/versions/{v}/load", headers=AUTH)
            assert r.status_code == 200, r.text


async def test_unloading_a_failed_newer_version_does_not_take_the_serving_one_down(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    """Policy latest: a broken version 3 is the only aspired version, 2 serves meanwhile.
    Excluding 3 would empty the aspired set and unload 2 as well, so it needs force; holding 2
    first (admin load) makes it safe."""
    app, client, base = served
    broken(base, 3)
    await _until_failed(app, 3)
    assert await _served_version(client) == 2
    r = await client.post("/admin/v1/models/m/versions/3/unload", headers=AUTH)
    assert r.status_code == 400 and "force" in r.json()["error"], r.text
    assert await _served_version(client) == 2
    r = await client.post("/admin/v1/models/m/versions/2/load", headers=AUTH)
    assert r.status_code == 200
    r = await client.post("/admin/v1/models/m/versions/3/unload", headers=AUTH)
    assert r.status_code == 200, r.text
    doc = (await client.get("/admin/v1/models/m", headers=AUTH)).json()
    assert doc["overrides"]["excluded"] == [3]
    assert await _served_version(client) == 2
    assert set(app.state.registry.snapshot.models["m"].versions) == {2}


async def test_reload_config_without_a_config_file_is_refused(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    _, client, _ = served
    r = await client.post("/admin/v1/config/reload", headers=AUTH)
    assert r.status_code == 400 and "model_config_file" in r.json()["error"]


async def test_reload_config_now_applies_a_changed_models_config(
    version_library: Path, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        publish(version_library, tmp_path / name, 1)
    config = tmp_path / "models.config"
    config.write_text(models_config({"a": str(tmp_path / "a")}))
    settings = Settings(
        model_config_file=str(config),
        model_config_file_poll_wait_seconds=3600,  # only the admin call re-reads it
        version_settle_seconds=0,
        admin_token=TOKEN,
    )
    async with running_app(settings) as (app, client):
        config.write_text(models_config({"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}))
        r = await client.post("/admin/v1/config/reload", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"models": ["a", "b"]}

        async def b_serves() -> bool:
            return "b" in app.state.registry.snapshot.models

        await _until(b_serves)
        assert await _served_version(client, "/v1/models/b:predict") == 1
        config.write_text("model_config_list { config { name: ")  # broken: the old one stays
        r = await client.post("/admin/v1/config/reload", headers=AUTH)
        assert r.status_code == 400 and "kept the previous one" in r.json()["error"]
        assert str(tmp_path) not in r.json()["error"]
        assert await _served_version(client, "/v1/models/b:predict") == 1


async def test_changes_are_refused_under_workers_while_reads_answer(
    served: tuple[FastAPI, httpx.AsyncClient, Path],
) -> None:
    app, client, _ = served
    app.state.publish_gate = object()  # what app.worker sets in each --workers process
    r = await client.put("/admin/v1/models/m/pin", headers=AUTH, json={"version": 1})
    assert r.status_code == 400
    assert "not available with --workers > 1" in r.json()["error"]
    assert (await client.get("/admin/v1/status", headers=AUTH)).status_code == 200
    assert await _served_version(client) == 2  # nothing changed
