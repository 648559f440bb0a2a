"""The Docker entrypoint keeps tensorflow/serving's contract (checked without a Docker engine)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx

from tests.harness import REPO, free_port, spawn, stop_process, wait_until_ready


def test_entrypoint_serves_model_base_path_slash_model_name(tmp_path: Path) -> None:
    shutil.copytree(REPO / "models" / "half_plus_two", tmp_path / "my_model")
    port = free_port()
    env = {
        **os.environ,
        "MODEL_NAME": "my_model",
        "MODEL_BASE_PATH": str(tmp_path),
        "HOTSERVE_HOST": "127.0.0.1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # The installed `hotserve` script imports this checkout, wherever the package was installed.
        "PYTHONPATH": str(REPO),
    }
    # Extra container arguments are appended and override the image's defaults, as in TFS.
    # A free gRPC port too: the image's --port=8500 may be taken on a shared test machine.
    cmd = [
        str(REPO / "docker" / "entrypoint.sh"),
        f"--rest_api_port={port}",
        f"--port={free_port()}",
    ]
    with (tmp_path / "log").open("wb") as log:
        proc = spawn(cmd, log, env=env)
        try:
            wait_until_ready(
                proc, f"http://127.0.0.1:{port}/readyz", 60, (tmp_path / "log").read_text
            )
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/models/my_model:predict", json={"instances": [1.0]}
            )
            assert r.json() == {"predictions": [3.5]}
        finally:
            stop_process(proc)
    assert "model my_model version 2: AVAILABLE" in (tmp_path / "log").read_text()
