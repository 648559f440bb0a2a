"""Pins and rollbacks through the admin API while a real server is under load: zero failed
requests, and every request sent after a pin answered is served by the pinned version."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.control.conftest import TOKEN, publish
from tests.harness import ServerProcess
from tests.integration.conftest import version_of

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when the request was sent
    version: int | None  # None: the request failed
    detail: str = ""
    done: float = 0.0  # when its answer arrived


def _clients(url: str, n: int, stop: threading.Event, out: list[Answer]) -> list[threading.Thread]:
    def run(k: int) -> None:
        x = float(k + 1)
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(url + "/v1/models/m:predict", json={"instances": [x]})
                    if r.status_code == 200:
                        version = version_of(r.json()["predictions"], [x])
                        out.append(Answer(sent, version, done=time.monotonic()))
                    else:
                        out.append(Answer(sent, None, f"{r.status_code} {r.text[:100]}"))
                except httpx.HTTPError as exc:
                    out.append(Answer(sent, None, repr(exc)))

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    return threads


def _answered_since(answers: list[Answer], since: float, n: int, timeout: float = 60) -> None:
    """Wait until `n` requests sent after `since` were answered (successfully or not)."""
    deadline = time.monotonic() + timeout
    while sum(1 for a in list(answers) if a.sent > since) < n:
        assert time.monotonic() < deadline, "no traffic"
        time.sleep(0.02)


def test_pins_and_rollbacks_under_load_lose_nothing(version_library: Path, tmp_path: Path) -> None:
    base = tmp_path / "m"
    base.mkdir()
    publish(version_library, base, 1, 2, 3)
    srv = ServerProcess(
        ["--model_name=m", f"--model_base_path={base}", "--version_settle_seconds=0"],
        env={"HOTSERVE_ADMIN_TOKEN": TOKEN},
    )
    srv.start(tmp_path / "server.log")
    answers: list[Answer] = []
    stop = threading.Event()
    threads = _clients(srv.url, 8, stop, answers)
    steps: list[tuple[float, float, int]] = []  # (change sent, answered, version now serving)
    try:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=120) as admin:
            since = time.monotonic()
            for pin in (1, 2, None, 1, None, 2, 1, None):
                _answered_since(answers, since, 20)  # traffic on the default now serving
                asked = time.monotonic()
                if pin is None:
                    r = admin.delete("/admin/v1/models/m/pin")
                else:
                    r = admin.put("/admin/v1/models/m/pin", json={"version": pin})
                assert r.status_code == 200, r.text
                since = time.monotonic()
                steps.append((asked, since, pin or 3))
            _answered_since(answers, since, 20)
            events = admin.get("/admin/v1/events", params={"model": "m"}).json()["events"]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.stop()
    log = srv.log()
    failed = [a for a in answers if a.version is None]
    assert not failed, (failed[:5], log[-2000:])
    assert len(answers) > 200
    # Every request sent after a change was answered, and answered before the next change was
    # asked for, is served by the new default.
    nexts = [asked for asked, _, _ in steps[1:]] + [float("inf")]
    for (_, since, version), until in zip(steps, nexts, strict=True):
        window = [a.version for a in answers if since < a.sent and a.done < until]
        assert window and set(window) == {version}, (version, sorted(set(window)))
    assert {e["version"] for e in events} >= {1, 2, 3}
    assert "pin model m to version 1 done" in log and "unpin model m done" in log
