"""Zero-downtime hot updates, over real HTTP against a real uvicorn process."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from app.publish import publish
from tests.harness import ServerProcess
from tests.integration.conftest import predict_version, version_of

XS = [1.0, 2.0, 3.0]
ENV = {
    "HOTSERVE_VERSION_SETTLE_SECONDS": "0.3",
    "HOTSERVE_DRAIN_TIMEOUT_SECONDS": "10",
    "HOTSERVE_LOAD_RETRY_INTERVAL_MICROS": "200000",
    "HOTSERVE_MAX_NUM_LOAD_RETRIES": "1",
}


@dataclass
class Load:
    """Concurrent clients hammering :predict; every answer is recorded with its send time."""

    url: str
    results: list[tuple[float, float, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: bool = False

    async def client(self, c: httpx.AsyncClient) -> None:
        while not self.stop:
            sent = time.monotonic()
            version = await predict_version(c, self.url, XS, self.failures)
            if version is not None:
                self.results.append((sent, time.monotonic(), version))


@pytest.fixture
def base(tmp_path: Path, bias_versions: Path) -> Path:
    b = tmp_path / "hs"
    b.mkdir()
    publish(bias_versions / "1", b, 1)
    return b


@pytest.fixture
def srv(tmp_path: Path, base: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(["--model_name=hs", f"--model_base_path={base}"], env=ENV)
    s.start(tmp_path / "server.log")
    yield s
    s.stop()


def status(s: ServerProcess) -> dict[int, dict[str, object]]:
    r = httpx.get(f"{s.url}/v1/models/hs", timeout=5)
    return {int(e["version"]): e for e in r.json()["model_version_status"]}


async def wait_state(s: ServerProcess, version: int, state: str, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        async with httpx.AsyncClient() as c:
            while True:
                r = await c.get(f"{s.url}/v1/models/hs/versions/{version}")
                if r.status_code == 200 and r.json()["model_version_status"][0]["state"] == state:
                    return
                await anyio.sleep(0.05)


async def answered_after(load: Load, since: float, count: int = 20, timeout: float = 30) -> None:
    """Poll until `count` requests sent after `since` were answered (the load really spans it)."""
    with anyio.fail_after(timeout):
        while sum(1 for sent, _, _ in load.results if sent > since) < count:
            await anyio.sleep(0.01)


async def log_says(s: ServerProcess, text: str, timeout: float = 30) -> None:
    """Poll the server's log until it contains `text`."""
    with anyio.fail_after(timeout):
        while text not in s.log():
            await anyio.sleep(0.05)


def retract(base: Path, version: int) -> None:
    """Roll back the way the README says: move the folder away atomically, then delete it."""
    trash = base / f".trash-{version}"
    os.rename(base / str(version), trash)
    shutil.rmtree(trash)


async def test_swaps_under_load_lose_nothing(
    srv: ServerProcess, base: Path, bias_versions: Path
) -> None:
    load = Load(f"{srv.url}/v1/models/hs:predict")
    done: dict[int, float] = {}
    last = 21
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(limits=limits, timeout=30) as c, anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(load.client, c)
        await answered_after(load, 0.0)
        for v in range(2, last + 1):
            publish(bias_versions / str(v), base, v)
            await wait_state(srv, v, "AVAILABLE")
            await wait_state(srv, v - 1, "END")
            done[v] = time.monotonic()
            await answered_after(load, done[v])
        retracted = time.monotonic()
        retract(base, last)  # roll back: the previous version is reloaded, the newest unloaded
        await wait_state(srv, last - 1, "AVAILABLE")
        await wait_state(srv, last, "END")
        rolled_back = time.monotonic()
        await answered_after(load, rolled_back)
        load.stop = True
    assert load.failures == []
    assert len(load.results) > 200
    for sent, received, version in load.results:
        if sent > rolled_back:
            assert version == last - 1
            continue
        if received > retracted:  # rollback under way: either of the two may answer
            assert version in (last - 1, last)
            continue
        newest_done = max((v for v, t in done.items() if t < sent), default=1)
        assert version >= newest_done, "answered by a version after its swap was reported done"
    served = {v for _, _, v in load.results}
    assert len(served) >= 10, served  # the load really spanned the swaps


@pytest.fixture
def patient_srv(tmp_path: Path, base: Path) -> Iterator[ServerProcess]:
    """A server whose settle window (2 s) is ten times the slow copy's pace (0.2 s a file), so a
    loaded machine stretching one pause past the window cannot make the test's premise false."""
    env = {**ENV, "HOTSERVE_VERSION_SETTLE_SECONDS": "2"}
    s = ServerProcess(["--model_name=hs", f"--model_base_path={base}"], env=env)
    s.start(tmp_path / "server.log")
    yield s
    s.stop()


async def test_slow_copy_is_not_loaded_before_complete(
    patient_srv: ServerProcess, base: Path, bias_versions: Path
) -> None:
    srv = patient_srv
    src = bias_versions / "2"
    dst = base / "2"
    files = sorted(p for p in src.rglob("*") if p.is_file())
    # saved_model.pb first: the worst case for a server that only looks for it.
    files.sort(key=lambda p: p.name != "saved_model.pb")
    for f in files:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        await anyio.sleep(0.2)  # the copy's pace (the stimulus), not a wait for the server
        assert 2 not in status(srv) or status(srv)[2]["state"] != "END"
    await wait_state(srv, 2, "AVAILABLE")
    assert status(srv)[2]["status"] == {"error_code": "OK", "error_message": ""}
    assert "load failed" not in srv.log()


async def test_corrupt_version_never_replaces_a_good_one(srv: ServerProcess, base: Path) -> None:
    bad = base / ".staging"
    (bad / "variables").mkdir(parents=True)
    (bad / "saved_model.pb").write_bytes(b"\x08\x01garbage that is not a SavedModel")
    os.rename(bad, base / "2")
    await wait_state(srv, 2, "END")
    st = status(srv)[2]["status"]
    assert isinstance(st, dict) and st["error_code"] != "OK" and st["error_message"]
    assert status(srv)[1]["state"] == "AVAILABLE"
    r = httpx.post(f"{srv.url}/v1/models/hs:predict", json={"instances": XS})
    assert version_of(r.json()["predictions"], XS) == 1


async def test_fixed_version_republished_loads(
    srv: ServerProcess, base: Path, bias_versions: Path
) -> None:
    bad = base / ".staging"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"garbage")
    os.rename(bad, base / "2")
    await wait_state(srv, 2, "END")
    retract(base, 2)
    await log_says(srv, "version 2 is no longer on disk")
    publish(bias_versions / "2", base, 2)
    await wait_state(srv, 2, "AVAILABLE")
    r = httpx.post(f"{srv.url}/v1/models/hs:predict", json={"instances": XS})
    assert version_of(r.json()["predictions"], XS) == 2


async def test_a_version_fixed_in_place_loads_again(
    srv: ServerProcess, base: Path, bias_versions: Path
) -> None:
    bad = base / ".staging"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"garbage")
    os.rename(bad, base / "2")
    await wait_state(srv, 2, "END")  # gave up
    shutil.copytree(bias_versions / "2", base / "2", dirs_exist_ok=True)  # same number, new files
    await wait_state(srv, 2, "AVAILABLE")
    r = httpx.post(f"{srv.url}/v1/models/hs:predict", json={"instances": XS})
    assert version_of(r.json()["predictions"], XS) == 2
    assert "version 2: changed on disk; loading it again" in srv.log()


async def test_deleting_every_version_keeps_serving(srv: ServerProcess, base: Path) -> None:
    retract(base, 1)
    await log_says(srv, "no versions found under")
    await log_says(srv, "keeping what is loaded")
    assert status(srv)[1]["state"] == "AVAILABLE"
    r = httpx.post(f"{srv.url}/v1/models/hs:predict", json={"instances": XS})
    assert r.status_code == 200
