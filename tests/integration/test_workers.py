"""--workers N: the publish gate in core's lifecycle (in process, real TensorFlow models), the
merged metrics, and N real worker processes on one port swapping one way together."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from app.core.types import ServableId, VersionState
from app.main import create_app
from app.metrics_merge import merge_expositions
from app.publish import publish
from app.settings import Settings
from tests.harness import ServerProcess
from tests.integration.conftest import predict_version, version_of

XS = [1.0, 2.0]


class RecordingGate:
    """A PublishGate that admits the versions in `admit`, never answers for those in `hold`
    (another worker still retrying them), refuses the rest, and records every call."""

    def __init__(
        self, admit: set[int], hold: frozenset[int] = frozenset(), catch: int | None = None
    ) -> None:
        self.admit = admit
        self.hold = hold
        self.catch = catch
        self.calls: list[tuple[str, int]] = []

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await anyio.sleep_forever()

    async def ready(self, sid: ServableId) -> bool:
        self.calls.append(("ready", sid.version))
        if sid.version in self.hold:
            await anyio.sleep_forever()
        return sid.version in self.admit

    def failed(self, sid: ServableId, reason: str) -> None:
        self.calls.append(("failed", sid.version))

    def published(self, sid: ServableId) -> None:
        self.calls.append(("published", sid.version))

    def withdrawn(self, sid: ServableId) -> None:
        self.calls.append(("withdrawn", sid.version))

    def catch_up(self, model: str) -> int | None:
        return self.catch

    async def caught_up(self, registry: object) -> None:
        return None


@asynccontextmanager
async def gated_app(settings: Settings, gate: RecordingGate) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    app.state.publish_gate = gate
    async with app.router.lifespan_context(app):
        yield app


async def _predict(app: FastAPI) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post("/v1/models/m:predict", json={"instances": XS})
        assert r.status_code == 200, r.text
        return version_of(r.json()["predictions"], XS)


async def _until(check: object, timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.05)


async def test_a_version_the_gate_refuses_is_never_routed(
    tmp_path: Path, bias_versions: Path
) -> None:
    base = tmp_path / "m"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    settings = Settings(
        model_name="m",
        model_base_path=str(base),
        version_settle_seconds=0.1,
        max_num_load_retries=0,
    )
    gate = RecordingGate(admit={1})
    async with gated_app(settings, gate) as app:
        registry = app.state.registry
        await _until(registry.is_ready)
        assert gate.calls == [("ready", 1), ("published", 1)]
        publish(bias_versions / "2", base, 2)
        await _until(lambda: ("ready", 2) in gate.calls)
        await _until(lambda: registry.status("m", 2)[0].state is VersionState.END)
        assert "served by none" in registry.status("m", 2)[0].error_message
        assert await _predict(app) == 1
        # A version this worker cannot load is reported, so the others drop it too.
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a graph")
        publish(broken, base, 3)
        await _until(lambda: ("failed", 3) in gate.calls)
        assert ("published", 2) not in gate.calls and await _predict(app) == 1


async def test_a_version_waiting_in_the_gate_gives_way_to_a_newer_one(
    tmp_path: Path, bias_versions: Path
) -> None:
    """Issue 10 review, C: version 2 waits for a worker that will never be ready (it retries
    there); version 3, the fix, must not wait behind it, and the others hear that 2 is given up."""
    base = tmp_path / "m"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    settings = Settings(model_name="m", model_base_path=str(base), version_settle_seconds=0.1)
    gate = RecordingGate(admit={1, 3}, hold=frozenset({2}))
    async with gated_app(settings, gate) as app:
        registry = app.state.registry
        await _until(registry.is_ready)
        publish(bias_versions / "2", base, 2)
        await _until(lambda: ("ready", 2) in gate.calls)
        publish(bias_versions / "3", base, 3)
        await _until(lambda: ("published", 3) in gate.calls)
        assert await _predict(app) == 3
        assert ("failed", 2) in gate.calls and ("published", 2) not in gate.calls
        assert registry.status("m", 2)[0].state is VersionState.END
        await _until(lambda: ("withdrawn", 1) in gate.calls)


async def test_a_retrying_version_that_is_no_longer_aspired_is_reported_failed(
    tmp_path: Path, bias_versions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10 review, C: a worker that stops retrying a version (a newer one replaced it)
    tells the supervisor, so no other worker waits --worker_swap_timeout_seconds for it."""
    base = tmp_path / "m"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    settings = Settings(
        model_name="m",
        model_base_path=str(base),
        version_settle_seconds=0.1,
        max_num_load_retries=5,
        load_retry_interval_micros=600_000_000,
    )
    gate = RecordingGate(admit={1, 3})
    async with gated_app(settings, gate) as app:
        registry = app.state.registry
        await _until(registry.is_ready)
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a graph")
        publish(broken, base, 2)
        await _until(lambda: "version 2: load attempt 1/6 failed" in caplog.text)
        publish(bias_versions / "3", base, 3)
        await _until(lambda: ("published", 3) in gate.calls)
        await _until(lambda: ("failed", 2) in gate.calls)
        assert await _predict(app) == 3


async def test_a_restarted_worker_serves_its_catch_up_version_until_another_is_published(
    tmp_path: Path, bias_versions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10 review, B, in process: the catch-up version (what the other workers serve) is
    loaded and kept although the source aspires only a newer, broken one; it goes once the
    workers publish another version."""
    base = tmp_path / "m"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a graph")
    publish(broken, base, 2)
    settings = Settings(
        model_name="m",
        model_base_path=str(base),
        version_settle_seconds=0.1,
        file_system_poll_wait_seconds=1,
        load_policy="resource_preserving",
        load_retry_interval_micros=600_000_000,
    )
    gate = RecordingGate(admit={1, 3}, catch=1)
    async with gated_app(settings, gate) as app:
        await _until(lambda: ("published", 1) in gate.calls)
        assert await _predict(app) == 1
        await _until(lambda: "version 2: load attempt 1/6 failed" in caplog.text)
        publish(bias_versions / "3", base, 3)
        await _until(lambda: ("published", 3) in gate.calls)
        await _until(lambda: ("withdrawn", 1) in gate.calls)
        assert await _predict(app) == 3
        assert gate.calls.index(("withdrawn", 1)) > gate.calls.index(("published", 3))


def test_metrics_are_summed_across_workers_and_gauges_kept_per_worker() -> None:
    text = (
        "# HELP req requests\n# TYPE req counter\n"
        'req{model="m"} {n}\n'
        "# HELP lat latency\n# TYPE lat histogram\n"
        'lat_bucket{le="+Inf"} {n}\nlat_sum 0.5\nlat_count {n}\n'
        "# HELP up state\n# TYPE up gauge\nup 1.0\n"
    )
    merged = merge_expositions({0: text.replace("{n}", "3"), 1: text.replace("{n}", "4")}).decode()
    assert 'req{model="m"} 7.0' in merged
    assert 'lat_bucket{le="+Inf"} 7.0' in merged and "lat_sum 1.0" in merged
    assert 'up{worker="0"} 1.0' in merged and 'up{worker="1"} 1.0' in merged
    assert merged.count("# TYPE req counter") == 1


class NewConnectionClients:
    """Closed-loop clients opening a new connection per request, so the kernel spreads them over
    the workers; each keeps its timeline of (wall-clock send time, version)."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.timelines: list[list[tuple[float, int]]] = [[] for _ in range(n)]
        self.failures: list[str] = []
        self.stop = False

    async def client(self, timeline: list[tuple[float, int]]) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as c:
            while not self.stop:
                sent = time.time()
                version = await predict_version(c, self.url, XS, self.failures)
                if version is not None:
                    timeline.append((sent, version))


_SKEW = re.compile(
    r"version (\d+): the default in all (\d+) workers; skew ([\d.]+) ms"
    r" \(first ([\d.]+), last ([\d.]+)\)"
)


async def test_two_workers_share_the_port_and_swap_one_way(
    tmp_path: Path, bias_versions: Path
) -> None:
    base = tmp_path / "m"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    args = ["--model_name=m", f"--model_base_path={base}", "--workers=2", "--enable_batching"]
    env = {
        "HOTSERVE_VERSION_SETTLE_SECONDS": "0.2",
        "HOTSERVE_MODEL_CACHE_DIR": str(tmp_path / "c"),
    }
    with ServerProcess(args, env=env) as srv:
        srv.start(tmp_path / "server.log", ready_timeout=180)
        assert srv.log().count("loaded here; waiting for every worker") == 2
        load = NewConnectionClients(srv.url + "/v1/models/m:predict", 6)
        async with anyio.create_task_group() as tg:
            for timeline in load.timelines:
                tg.start_soon(load.client, timeline)
            try:
                await _until(lambda: sum(map(len, load.timelines)) > 50)
                publish(bias_versions / "2", base, 2)
                # Version 2's own line: the startup's version 1 line must not satisfy the wait.
                await _until(lambda: any(m.group(1) == "2" for m in _SKEW.finditer(srv.log())))
                await anyio.sleep(1.0)
            finally:
                load.stop = True
        assert load.failures == []
        match = next(m for m in _SKEW.finditer(srv.log()) if m.group(1) == "2")
        last_published = float(match.group(5))
        for timeline in load.timelines:
            seen_new = False
            for sent, version in timeline:
                if version == 2:
                    seen_new = True
                # After the last worker switched, nobody is sent back to version 1.
                assert not (seen_new and version == 1 and sent > last_published), timeline
            assert seen_new
        # Metrics cover both workers: the request counter sums every answered request.
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'worker="0"' in metrics and 'worker="1"' in metrics


def _worker_pid(log: str, index: int) -> int:
    return int(re.findall(rf"worker {index} \(pid (\d+)\) serving", log)[-1])


async def test_a_restarted_worker_serves_the_published_version_before_accepting(
    tmp_path: Path, bias_versions: Path
) -> None:
    """Issue 10 review, B: with version 2 serving and a broken version 3 retrying, a worker
    killed with -9 comes back serving version 2 (not only aspiring 3) and takes no connection
    before it does: no client ever gets a 404."""
    base = tmp_path / "m"
    base.mkdir()
    publish(bias_versions / "2", base, 2)
    args = ["--model_name=m", f"--model_base_path={base}", "--workers=2"]
    env = {
        "HOTSERVE_VERSION_SETTLE_SECONDS": "0.2",
        "HOTSERVE_MODEL_CACHE_DIR": str(tmp_path / "c"),
        "HOTSERVE_LOAD_RETRY_INTERVAL_MICROS": "600000000",
    }
    with ServerProcess(args, env=env) as srv:
        srv.start(tmp_path / "server.log", ready_timeout=180)
        await _until(lambda: srv.log().count("version 2: AVAILABLE") == 2)
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a graph")
        publish(broken, base, 3)
        await _until(lambda: srv.log().count("version 3: load attempt 1/6 failed") == 2)
        os.kill(_worker_pid(srv.log(), 1), signal.SIGKILL)
        await _until(lambda: "worker 1 exited with" in srv.log())
        load = NewConnectionClients(srv.url + "/v1/models/m:predict", 4)
        async with anyio.create_task_group() as tg:
            for timeline in load.timelines:
                tg.start_soon(load.client, timeline)
            try:
                # Before the fix the new worker answered 404 at once and never loaded version 2.
                await _until(
                    lambda: load.failures or srv.log().count("version 2: AVAILABLE") == 3,
                    timeout=90,
                )
                served = sum(map(len, load.timelines))
                await _until(
                    lambda: load.failures or sum(map(len, load.timelines)) > served + 200,
                    timeout=20,
                )
            finally:
                load.stop = True
        assert load.failures == []
        assert {v for timeline in load.timelines for _, v in timeline} == {2}
        assert "worker 1 catches up with {'m': 2}" in srv.log()


async def test_a_rollback_switches_every_worker_together(
    tmp_path: Path, bias_versions: Path
) -> None:
    """Issue 10 review, A: deleting the newest version reloads the previous one (`latest`) in
    each worker at its own scan; it is gated like a new version, so once the last worker
    switched back nobody is sent to the deleted version again (before: 2,1,2,1 for a scan)."""
    base = tmp_path / "m"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    args = [
        "--model_name=m",
        f"--model_base_path={base}",
        "--workers=2",
        "--file_system_poll_wait_seconds=2",
        "--watch_file_events=false",
    ]
    env = {
        "HOTSERVE_VERSION_SETTLE_SECONDS": "0.2",
        "HOTSERVE_MODEL_CACHE_DIR": str(tmp_path / "c"),
    }
    with ServerProcess(args, env=env) as srv:
        srv.start(tmp_path / "server.log", ready_timeout=180)
        publish(bias_versions / "2", base, 2)
        await _until(lambda: srv.log().count("version 1: END (drain+unload") == 2)
        load = NewConnectionClients(srv.url + "/v1/models/m:predict", 6)
        async with anyio.create_task_group() as tg:
            for timeline in load.timelines:
                tg.start_soon(load.client, timeline)
            try:
                await _until(lambda: sum(map(len, load.timelines)) > 50)
                shutil.rmtree(base / "2")
                await _until(lambda: srv.log().count("version 1: AVAILABLE") == 4)
                await anyio.sleep(1.0)
            finally:
                load.stop = True
        assert load.failures == []
        rollbacks = [m for m in _SKEW.finditer(srv.log()) if m.group(1) == "1"]
        assert len(rollbacks) == 2, "the rollback to version 1 was not gated"
        last_published = float(rollbacks[-1].group(5))
        for timeline in load.timelines:
            versions = [v for _, v in timeline]
            assert versions[-1] == 1
            assert not any(v == 2 and sent > last_published for sent, v in timeline), timeline
