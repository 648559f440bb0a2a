"""A real hotserve server reading `s3://` from moto's S3 server, under load: discovery, swap,
rollback and a half-uploaded version, with every request answered."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx

from tests.harness import ServerProcess
from tests.integration.conftest import predict_version
from tests.storage.conftest import S3

XS = [1.0, 2.0, 3.0]


class Load:
    """Closed-loop clients on :predict recording (send time, version) and every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, int]] = []
        self.timelines: list[list[int]] = []
        self.failures: list[str] = []
        self.stop = False

    async def client(self, c: httpx.AsyncClient) -> None:
        timeline: list[int] = []
        self.timelines.append(timeline)
        while not self.stop:
            sent = time.monotonic()
            version = await predict_version(c, self.url, XS, self.failures)
            if version is not None:
                self.seen.append((sent, version))
                timeline.append(version)

    async def wait_for(self, version: int, timeout: float = 90.0) -> float:
        """Wait (polling the answers) until `version` answers; return when it first did."""
        with anyio.fail_after(timeout):
            while True:
                hits = [t for t, v in self.seen if v == version]
                if hits:
                    return hits[0]
                await anyio.sleep(0.05)


async def test_s3_versions_swap_and_roll_back_under_load_without_failures(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    bucket = s3.new_bucket("serving")
    s3.upload(bias_models / "1", bucket, "m/1")
    args = [
        "--model_name=m",
        f"--model_base_path=s3://{bucket}/m",
        f"--model_cache_dir={tmp_path / 'cache'}",
        "--file_system_poll_wait_seconds=1",
    ]
    env = {**s3.env, "HOTSERVE_DRAIN_TIMEOUT_SECONDS": "10", "HOTSERVE_MAX_NUM_LOAD_RETRIES": "0"}
    with ServerProcess(args, env=env) as srv:
        srv.start(tmp_path / "server.log", ready_timeout=120)
        load = Load(srv.url + "/v1/models/m:predict")
        async with httpx.AsyncClient(timeout=30) as c, anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(load.client, c)
            try:
                await load.wait_for(1)
                # Half an upload (the graph only) of version 3: never loaded, v1 keeps serving.
                await anyio.to_thread.run_sync(
                    lambda: s3.upload(bias_models / "3", bucket, "m/3", only={"saved_model.pb"})
                )
                await _wait_log(srv, "version 3 rejected")
                s3_v2 = time.monotonic()
                await anyio.to_thread.run_sync(lambda: s3.upload(bias_models / "2", bucket, "m/2"))
                await load.wait_for(2)
                swapped = time.monotonic() - s3_v2
                await anyio.to_thread.run_sync(lambda: s3.delete(bucket, "m/2"))
                await anyio.to_thread.run_sync(lambda: s3.delete(bucket, "m/3"))
                rolled_back_from = time.monotonic()
                while not any(v == 1 and t > rolled_back_from for t, v in load.seen):
                    await anyio.sleep(0.05)
                    assert time.monotonic() - rolled_back_from < 90, "no rollback"
                await anyio.sleep(0.5)
            finally:
                load.stop = True
        versions = [v for _t, v in sorted(load.seen)]
        assert load.failures == []
        assert 3 not in versions
        assert {1, 2} <= set(versions), swapped
        # One way at a time: each connection sees v1, then v2, then v1 again, never flapping.
        for timeline in load.timelines:
            changes = [v for i, v in enumerate(timeline) if i == 0 or v != timeline[i - 1]]
            assert changes == [1, 2, 1], changes[:20]
        assert not [line for line in srv.log().splitlines() if "version 3: LOADING" in line]


async def _wait_log(srv: ServerProcess, needle: str, timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while needle not in srv.log():
            await anyio.sleep(0.1)
