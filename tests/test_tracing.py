"""Request IDs, traceparent pass-through, JSON logs and the access log (app.tracing, app.logs)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app import tracing
from app.logs import JsonFormatter, RequestFields, TextFormatter
from app.settings import Settings
from tests.harness import REPO, ServerProcess, running_app

HALF = REPO / "models" / "half_plus_two"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TOKEN = "tracing-admin-token-0123456789"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model_name="half", model_base_path=str(HALF), version_settle_seconds=0)
    async with running_app(settings) as (_, c):
        yield c


@pytest.mark.parametrize("path", ["/v1/models/half:predict", "/healthz", "/v1/models/nope"])
async def test_a_request_id_is_returned_and_generated_when_missing(
    client: httpx.AsyncClient, path: str
) -> None:
    body = {"instances": [1.0]}
    r = await client.post(path, json=body) if ":" in path else await client.get(path)
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    mine = "req-42.abc:def/ghi"
    r = await client.request(
        "POST" if ":" in path else "GET",
        path,
        json=body if ":" in path else None,
        headers={"X-Request-ID": mine},
    )
    assert r.headers["x-request-id"] == mine
    assert r.headers.get_list("x-request-id") == [mine]


@pytest.mark.parametrize("bad", ["a" * 129, "has space", 'quote"', "semi;colon", ""])
async def test_a_malformed_request_id_is_replaced(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_traceparent_is_passed_through_when_well_formed(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/models/half:predict", json={"instances": [1.0]}, headers={"traceparent": TRACEPARENT}
    )
    assert r.status_code == 200 and r.headers["traceparent"] == TRACEPARENT
    for bad in ["01-xyz", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", TRACEPARENT + "-extra"]:
        r = await client.get("/healthz", headers={"traceparent": bad})
        assert "traceparent" not in r.headers


def _record(msg: str) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "app.x", "levelname": "INFO", "msg": msg})
    RequestFields().filter(record)
    return record


def test_formatters_add_the_request_fields_inside_a_request_only() -> None:
    outside = _record("hello")
    assert TextFormatter().format(outside).endswith("app.x: hello")
    assert "request_id" not in json.loads(JsonFormatter().format(outside))
    token = tracing._current.set(tracing.RequestContext("rid-1", "4bf9"))
    try:
        inside = _record("hello %s")
    finally:
        tracing._current.reset(token)
    assert TextFormatter().format(inside).endswith("[request_id=rid-1]")
    line = json.loads(JsonFormatter().format(inside))
    assert line["request_id"] == "rid-1" and line["trace_id"] == "4bf9"
    assert line["level"] == "INFO" and line["logger"] == "app.x" and "time" in line


def test_json_logs_carry_the_request_id_in_every_line_about_the_request(tmp_path: Path) -> None:
    srv = ServerProcess(
        [
            "--model_name=half",
            f"--model_base_path={HALF}",
            "--log_format=json",
            "--access_log",
            "--version_settle_seconds=0",
        ],
        env={"HOTSERVE_ADMIN_TOKEN": TOKEN},
    )
    srv.start(tmp_path / "server.log")
    try:
        headers = {"X-Request-ID": "predict-1", "traceparent": TRACEPARENT}
        r = httpx.post(
            srv.url + "/v1/models/half:predict", json={"instances": [1.0]}, headers=headers
        )
        assert r.status_code == 200
        admin = {"X-Request-ID": "admin-1", "Authorization": f"Bearer {TOKEN}"}
        r = httpx.put(srv.url + "/admin/v1/models/half/pin", json={"version": 2}, headers=admin)
        assert r.status_code == 200, r.text
        r = httpx.get(srv.url + "/admin/v1/status", headers={"X-Request-ID": "intruder-1"})
        assert r.status_code == 401
    finally:
        srv.stop()
    lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    assert len(lines) > 5 and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    by_id: dict[str, list[dict[str, object]]] = {}
    for line in lines:
        by_id.setdefault(str(line.get("request_id")), []).append(line)
    predict = by_id["predict-1"]
    assert [x["logger"] for x in predict] == ["hotserve.access"]
    assert predict[0]["trace_id"] == TRACEPARENT.split("-")[1]
    assert "/v1/models/half:predict" in str(predict[0]["message"])
    admin_lines = [str(x["message"]) for x in by_id["admin-1"]]
    assert any("pin model half to version 2 done" in m for m in admin_lines), admin_lines
    assert any("PUT /admin/v1/models/half/pin" in m for m in admin_lines)
    intruder = [str(x["message"]) for x in by_id["intruder-1"]]
    assert any("refused GET /admin/v1/status" in m for m in intruder), intruder
    states = [str(x["message"]) for x in lines if "AVAILABLE" in str(x["message"])]
    assert states, "version state changes are logged as JSON too"


async def test_no_access_log_lines_when_off(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hotserve.access")
    await client.post("/v1/models/half:predict", json={"instances": [1.0]})
    assert not [r for r in caplog.records if r.name == "hotserve.access"]


async def test_a_path_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A percent-encoded newline in a path (unauthenticated) or in an admin name or label must
    not start a new, forged line in the text logs: control characters are escaped."""
    settings = Settings(
        model_name="half",
        model_base_path=str(HALF),
        version_settle_seconds=0,
        admin_token=TOKEN,
        access_log=True,
    )
    forged = "%0A2026-01-01 00:00:00,000 INFO app.control.admin: admin: 10.0.0.1:1: forged"
    caplog.set_level(logging.INFO)
    async with running_app(settings) as (_, client):
        await client.get(f"/admin/x{forged}")  # refused, and logged
        await client.get(f"/v1/models/x{forged}")  # access log
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = await client.put(
            f"/admin/v1/models/half/labels/a{forged}", headers=auth, json={"version": 2}
        )
        assert r.status_code == 200
        await client.post(f"/admin/v1/models/n{forged}/versions/1/load", headers=auth)
    messages = [
        r.getMessage() for r in caplog.records if r.name in ("app.control.admin", "hotserve.access")
    ]
    about = [m for m in messages if "forged" in m]
    assert len(about) >= 5, messages
    assert not [m for m in about if "\n" in m], about
    assert any("refused GET /admin/x\\n2026" in m for m in about), about
