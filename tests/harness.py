"""Test harnesses: an in-process app with its lifespan entered, and a real uvicorn subprocess.

Route tests use `running_app` + httpx.ASGITransport; anything about concurrency, hot swaps or
shutdown uses `ServerProcess`, a real `python -m app` on 127.0.0.1 talking over sockets.

Every process a test starts goes through `spawn`/`stop_process` (or `ServerProcess`, built on
them): it runs in a process group of its own, is stopped on every path (a start that fails or
times out included), and whatever is still alive at the end of the session is killed by the
`_no_leaked_processes` fixture in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import httpx
from fastapi import FastAPI

from app.core.registry import Registry
from app.core.types import VersionState
from app.errors import NotFound
from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# TF Serving's own test models and expected responses. They live outside the repository (CI
# keeps ../shared beside the checkout; a clone has no such folder) and may not be copied in, so
# only the checks that compare against these exact files use them, through the
# `tf_serving_testdata` fixture, which skips when the folder is missing. Everything else runs on
# the equivalents scripts/make_test_models.py builds (the `testdata` fixture).
TF_SERVING_TESTDATA = REPO.parent / "shared" / "testdata"
MAKE_TEST_MODELS = REPO / "scripts" / "make_test_models.py"


def build_test_models(out: Path, timeout: float = 300.0) -> Path:
    """Run scripts/make_test_models.py into `out` and return it.

    In a subprocess: building TF1 graphs and a TF2 module leaves global TensorFlow state
    (default graph, eager context, op registrations) that the tests' own loads must not see.
    Raises RuntimeError with the script's output when it fails.
    """
    done = subprocess.run(
        [sys.executable, str(MAKE_TEST_MODELS), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{MAKE_TEST_MODELS.name} failed ({done.returncode}):\n{done.stderr}")
    return out


_BUILD_VERSIONS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from make_demo_models import export_failing_half_plus, export_half_plus
out = Path(sys.argv[2])
for v in sys.argv[3].split(","):
    export_half_plus(out / v, float(v))
for v in filter(None, sys.argv[4].split(",")):
    export_failing_half_plus(out / v, float(v))
"""


def build_bias_versions(
    out: Path, versions: Sequence[int], failing: Sequence[int] = (), timeout: float = 300.0
) -> Path:
    """SavedModels `<out>/<v>` computing 0.5*x + v for each of `versions` (every answer names its
    version), plus `<out>/<v>` for each of `failing`: a version that loads and fails every
    request at run time. In a subprocess, as `build_test_models` (the TF1 graph-building state
    stays out of this process). Raises RuntimeError with the builder's output when it fails."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _BUILD_VERSIONS,
            str(REPO / "scripts"),
            str(out),
            ",".join(map(str, versions)),
            ",".join(map(str, failing)),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the versions failed ({done.returncode}):\n{done.stderr}")
    return out


def models_config(entries: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """A models.config text proto; `extra` adds raw fields (policy, labels) per model."""
    parts = []
    for name, path in entries.items():
        more = (extra or {}).get(name, "")
        parts.append(
            f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" {more} }}'
        )
    return "model_config_list {\n" + "\n".join(parts) + "\n}\n"


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, *, ready_timeout: float = 60.0, wait_ready: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Enter the app's lifespan (ASGITransport does not) and wait until every model settled.

    The lifespan runs in a task of its own, as under uvicorn: pytest-asyncio may set up and tear
    down a fixture in different tasks, and the lifespan's task group must enter and exit in one.
    """
    app = create_app(settings)
    started, stop = asyncio.Event(), asyncio.Event()

    async def host() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    task = asyncio.get_running_loop().create_task(host())
    try:
        await asyncio.wait(
            [task, asyncio.ensure_future(started.wait())],
            timeout=ready_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task.done():
            task.result()
        registry: Registry = app.state.registry
        if wait_ready:
            with anyio.fail_after(ready_timeout):
                while not (registry.is_ready() and not _loading(registry)):
                    await anyio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client
    finally:
        stop.set()
        await task


def _loading(registry: Registry) -> bool:
    """Whether a version is still on its way in. Ready means each model serves *a* version (as
    TF Serving: its latest); under the `all` policy the others may still be loading (paced
    while requests are in flight, app.core.pacing), and route tests ask for each version."""
    for name in registry.model_names():
        try:
            statuses = registry.status(name)
        except NotFound:  # no version found (yet, or ever): nothing on its way in
            continue
        if any(s.state in (VersionState.START, VersionState.LOADING) for s in statuses):
            return True
    return False


def wait_all_available(url: str, counts: dict[str, int], timeout: float = 120) -> None:
    """Poll each model's REST status until `counts[model]` of its versions are AVAILABLE.

    Ready means each model serves *a* version (as TF Serving: its latest); under the `all`
    policy, or a rollout's two arms, the others may still be loading (paced while requests are
    in flight, app.core.pacing), and tests that ask for each version need them all."""
    deadline = time.monotonic() + timeout
    for model, n in counts.items():
        while True:
            path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
            states = httpx.get(f"{url}{path}", timeout=5).json()
            available = [s for s in states["model_version_status"] if s["state"] == "AVAILABLE"]
            if len(available) == n:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.05)


def gone(pid: int) -> bool:
    """Whether process `pid` exited and was reaped: a zombie, or a process still running, is
    not gone (`kill(pid, 0)` succeeds for both)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


_HANDED_OUT: set[int] = set()  # every port free_port returned in this test process


def free_port() -> int:
    """A port free on 127.0.0.1 now, never one this process was handed before. Why: the kernel
    may give the same ephemeral port to two binds in a row once the first socket is closed, so
    a server's REST and gRPC ports, picked one after the other, came out equal once (the server
    then exited: address already in use)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


# Processes started by `spawn` and not yet reaped by `stop_process`: the session-end safety net.
LIVE: set[subprocess.Popen[bytes]] = set()


def spawn(args: Sequence[str], out: BinaryIO, **kw: Any) -> subprocess.Popen[bytes]:
    """Popen `args` in a new session (so its whole process group can be signalled), output to
    `out`, registered in LIVE until `stop_process` reaps it."""
    proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True, **kw)
    LIVE.add(proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (a graceful shutdown), SIGKILL after `timeout` s; then SIGKILL whatever is left in
    its process group (a shell's children, say). Returns the exit code; idempotent."""
    try:
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return proc.wait()
    finally:
        _kill_group(proc)
        LIVE.discard(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    timeout: float,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Poll `url` until it answers 200. Raises RuntimeError if the process exits first and
    TimeoutError after `timeout` s; the caller still owns (and must stop) the process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{describe()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout}s:\n{describe()}")


class ServerProcess:
    """`python -m app` on 127.0.0.1:<free port>, stopped (SIGTERM, then SIGKILL) by `stop`.

    `start` stops the process itself when the server exits or never becomes ready, so a failed
    start leaves nothing running; after a successful start the caller owns it (use `server` or
    `with ServerProcess(...) as s:` to have it stopped on every path).
    """

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "app", f"--rest_api_port={self.port}", *args]
        self.env = {**os.environ, "HOTSERVE_HOST": "127.0.0.1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._out: BinaryIO | None = None

    def start(self, log_path: Path, ready_timeout: float = 60.0, wait_ready: bool = True) -> None:
        self.log_path = log_path
        self._out = log_path.open("wb")
        try:
            self.proc = spawn(self.args, self._out, cwd=REPO, env=self.env)
            path = "/readyz" if wait_ready else "/healthz"
            wait_until_ready(self.proc, self.url + path, ready_timeout, self.log)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (idempotent); its exit code, or None if it never started."""
        try:
            return stop_process(self.proc, timeout) if self.proc is not None else None
        finally:
            if self._out is not None:
                self._out.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server(args: Sequence[str], log_path: Path, **kw: object) -> Iterator[ServerProcess]:
    with ServerProcess(args) as proc:
        proc.start(log_path, **kw)  # type: ignore[arg-type]
        yield proc


@contextlib.contextmanager
def threaded_server(app: FastAPI, ready_timeout: float = 30.0) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1, port 0, in a thread of this process: for tests that inject a
    fake model through `create_app(loader=...)` but still need real sockets and concurrency."""
    import threading

    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ready_timeout
        while not srv.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = srv.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        while httpx.get(url + "/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("models did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        # Also when it never started or never became ready: the thread must not outlive the test.
        srv.should_exit = True
        thread.join(30)
