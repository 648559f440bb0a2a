"""--workers 2 on an s3:// base path: a version one worker cannot get is served by no worker."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx

from tests.harness import ServerProcess
from tests.integration.conftest import version_of
from tests.storage.conftest import S3

XS = [1.0, 2.0]


async def test_version_one_worker_cannot_download_is_served_by_none(
    s3: S3, bias_models: Path, tmp_path: Path
) -> None:
    bucket = s3.new_bucket("workers")
    s3.upload(bias_models / "1", bucket, "m/1")
    cache = tmp_path / "cache"
    args = [
        "--model_name=m",
        f"--model_base_path=s3://{bucket}/m",
        f"--model_cache_dir={cache}",
        "--workers=2",
        "--worker_swap_timeout_seconds=3",
    ]
    with ServerProcess(args, env=s3.env) as srv:
        srv.start(tmp_path / "server.log", ready_timeout=180)
        # Worker 1 loses its cache folder: it keeps serving version 1 but cannot download more.
        (cache / "worker-1").rename(cache / "worker-1.old")
        (cache / "worker-1").write_text("not a folder")
        seen: list[int] = []
        failures: list[str] = []
        stop = False

        async def client() -> None:
            limits = httpx.Limits(max_keepalive_connections=0)  # reach both workers
            async with httpx.AsyncClient(timeout=30, limits=limits) as c:
                while not stop:
                    r = await c.post(srv.url + "/v1/models/m:predict", json={"instances": XS})
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        seen.append(version_of(r.json()["predictions"], XS))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(client)
            try:
                await anyio.to_thread.run_sync(lambda: s3.upload(bias_models / "2", bucket, "m/2"))
                deadline = time.monotonic() + 90
                while "served by none" not in srv.log():
                    assert time.monotonic() < deadline, srv.log()[-3000:]
                    await anyio.sleep(0.1)
                await anyio.sleep(1.0)
            finally:
                stop = True
        assert failures == []
        assert seen and set(seen) == {1}
        assert "giving it up" in srv.log()
