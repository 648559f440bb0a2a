"""`uvicorn app.main:app` reads the same settings from the environment as the flags set."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from tests.harness import REPO, free_port, spawn, stop_process, wait_until_ready


def test_uvicorn_app_main_app_with_env_settings(tmp_path: Path, testdata: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HOTSERVE_MODEL_NAME": "default",
        "HOTSERVE_MODEL_BASE_PATH": str(testdata / "saved_model_half_plus_two_cpu"),
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (tmp_path / "log").open("wb") as log:
        proc = spawn(cmd, log, cwd=REPO, env=env)
        try:
            wait_until_ready(
                proc, f"http://127.0.0.1:{port}/readyz", 60, (tmp_path / "log").read_text
            )
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/models/default:predict",
                json={"instances": [2.0, 3.0, 4.0]},
            )
            assert r.json() == {"predictions": [3.0, 3.5, 4.0]}
        finally:
            stop_process(proc)
