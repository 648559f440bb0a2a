"""A real S3 API on loopback: moto's server mode in a subprocess, one per test module.

Clients find it the standard way (`AWS_ENDPOINT_URL` and credentials in the environment), which
is also how a hotserve server process is pointed at it (`S3.env`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import build_bias_versions, free_port, spawn, stop_process

pytest.importorskip("moto", reason="moto[server] is in the dev extra")
pytest.importorskip("s3fs", reason="s3fs is in the dev extra")


@dataclass
class S3:
    """The running server, a boto3 client for it, and the environment that reaches it."""

    endpoint: str
    env: dict[str, str]
    client: Any

    def upload(self, local: Path, bucket: str, prefix: str, only: set[str] | None = None) -> None:
        """Put every file under `local` at `prefix/<relative path>` (or only those in `only`)."""
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            if only is None or rel in only:
                self.client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=path.read_bytes())

    def delete(self, bucket: str, prefix: str) -> None:
        listed = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
        for obj in listed.get("Contents", []):
            self.client.delete_object(Bucket=bucket, Key=obj["Key"])

    def new_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(endpoint + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # for the in-process scanners (s3fs reads the standard variables)
        try:
            yield S3(endpoint, env, client)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            client.close()
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def bias_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SavedModels `<lib>/<v>` (v = 1..3) computing 0.5*x + v: every answer names its version."""
    return build_bias_versions(tmp_path_factory.mktemp("bias"), (1, 2, 3))
