"""Every entry point starts from the environment alone and logs version state changes:
`python -m app`, the `hotserve` console script, `uvicorn --factory app.main:create_app` and the
compatibility `uvicorn app.main:app`, each a real process on 127.0.0.1. Importing `app.main`
builds nothing, so an environment that is only valid together with flags cannot break the CLI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import hugepages
from app.cli import EXIT_FAILURE, _serve_with_uvicorn
from app.settings import Settings
from tests.harness import REPO, free_port, spawn, stop_process

MODEL = REPO / "models" / "half_plus_two"  # versions 1 and 2; the latest (2) is served
AVAILABLE = "model half_plus_two version 2: AVAILABLE"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any hotserve setting, plus `extra`. PYTHONPATH makes
    the console script import this checkout even when the installed package lives elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("HOTSERVE_")
        and k.upper() not in ("MODEL_NAME", "MODEL_BASE_PATH")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["HOTSERVE_HOST"] = "127.0.0.1"
    return {**env, **extra}


@contextlib.contextmanager
def _process(
    cmd: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd`; on every path, SIGTERM it (SIGKILL after 30 s, to its whole process group)
    and close its log."""
    with log_path.open("wb") as log:
        proc = spawn(cmd, log, cwd=REPO, env=env)
        try:
            yield proc
        finally:
            stop_process(proc)


def _wait_for(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log_path.read_text()}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} not 200 within {timeout}s:\n{log_path.read_text()}")


def _console_script() -> str:
    script = shutil.which("hotserve", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the hotserve console script is not installed beside this interpreter")
    return script


def _serve_and_check(cmd: list[str], env: dict[str, str], port: int, tmp_path: Path) -> str:
    """Start `cmd`, wait until ready, predict, stop it with SIGTERM; return its output."""
    log_path = tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with _process(cmd, env, log_path) as proc:
        _wait_for(url + "/readyz", proc, log_path)
        r = httpx.post(url + "/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0]})
        assert r.json() == {"predictions": [3.5, 4.0]}  # version 2: x/2 + 3
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return log_path.read_text(errors="replace")


def _uvicorn(target: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        *extra,
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


@pytest.mark.parametrize(
    "entry_point",
    ["python -m app", "hotserve", "uvicorn --factory app.main:create_app", "uvicorn app.main:app"],
)
def test_entry_point_serves_from_env_and_logs_state_changes(
    entry_point: str, tmp_path: Path
) -> None:
    port = free_port()
    # Both ways of naming the model from the environment, across the entry points.
    docker_style = entry_point in ("python -m app", "uvicorn --factory app.main:create_app")
    model_env = (
        {"MODEL_NAME": "half_plus_two", "MODEL_BASE_PATH": str(MODEL.parent)}
        if docker_style
        else {"HOTSERVE_MODEL_NAME": "half_plus_two", "HOTSERVE_MODEL_BASE_PATH": str(MODEL)}
    )
    env = _clean_env(
        HOTSERVE_REST_API_PORT=str(port), HOTSERVE_VERSION_SETTLE_SECONDS="0", **model_env
    )
    commands = {
        "python -m app": [sys.executable, "-m", "app"],
        "hotserve": [_console_script()] if entry_point == "hotserve" else [],
        "uvicorn --factory app.main:create_app": _uvicorn("app.main:create_app", port, "--factory"),
        "uvicorn app.main:app": _uvicorn("app.main:app", port),
    }
    output = _serve_and_check(commands[entry_point], env, port, tmp_path)
    # Logged exactly once: the CLI and create_app share one handler.
    assert output.count(AVAILABLE) == 1, output
    assert re.search(r"model half_plus_two version 2: LOADING from ", output), output
    assert "model half_plus_two version 2: UNLOADING" in output, output
    if "GLIBC_TUNABLES" not in env:  # no re-run with huge pages for malloc unless asked
        assert "glibc.malloc.hugetlb" not in output, output


def test_the_command_reruns_itself_with_huge_pages_when_asked(tmp_path: Path) -> None:
    port = free_port()
    env = _clean_env(
        HOTSERVE_REST_API_PORT=str(port),
        HOTSERVE_VERSION_SETTLE_SECONDS="0",
        MODEL_NAME="half_plus_two",
        MODEL_BASE_PATH=str(MODEL.parent),
    )
    if not _huge_pages_possible(env):
        pytest.skip("huge pages for malloc are not available on this machine")
    cmd = [sys.executable, "-m", "app", "--malloc_huge_pages"]
    output = _serve_and_check(cmd, env, port, tmp_path)
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in output, output
    assert output.count(AVAILABLE) == 1, output  # re-run once, not again


def _huge_pages_possible(env: dict[str, str]) -> bool:
    return (
        sys.platform == "linux"
        and "GLIBC_TUNABLES" not in env
        and hugepages._glibc_supports_it()
        and hugepages._thp_available()
    )


def test_cli_flag_with_file_from_env_starts(tmp_path: Path) -> None:
    """`--enable_batching` on the command line, its parameters file in the environment: valid
    together; importing app.main used to build an app from the environment alone and fail."""
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 4 } batch_timeout_micros { value: 1000 }\n")
    port = free_port()
    env = _clean_env(
        HOTSERVE_REST_API_PORT=str(port),
        HOTSERVE_BATCHING_PARAMETERS_FILE=str(params),
        HOTSERVE_MODEL_NAME="half_plus_two",
        HOTSERVE_MODEL_BASE_PATH=str(MODEL),
        HOTSERVE_VERSION_SETTLE_SECONDS="0",
    )
    output = _serve_and_check(
        [sys.executable, "-m", "app", "--enable_batching"], env, port, tmp_path
    )
    assert "(batching on)" in output
    assert "max_batch_size=4" in output


def test_importing_app_main_builds_nothing() -> None:
    """An environment that is invalid alone (a missing monitoring config, a batching file
    without --enable_batching) must not break `import app.main`."""
    env = _clean_env(
        HOTSERVE_MONITORING_CONFIG_FILE="/nonexistent/monitoring.config",
        HOTSERVE_BATCHING_PARAMETERS_FILE="/nonexistent/batching.pbtxt",
    )
    code = (
        "import app.main as m;"
        "assert 'app' not in vars(m);"
        "assert m._default_app.cache_info().currsize == 0"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_cli_bad_monitoring_config_exits_255(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(monitoring_config_file="/nonexistent/monitoring.config")
    assert _serve_with_uvicorn(settings) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith(
        "Failed to start server. Error: INVALID_ARGUMENT: Failed to read MonitoringConfig"
    )
