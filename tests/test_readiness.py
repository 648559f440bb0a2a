"""`/readyz` is false from the moment shutdown begins: at SIGTERM under a real uvicorn (while a
slow request is still in flight and being drained), at the lifespan's exit otherwise, and after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import anyio
import httpx

from app.lifespan import notice_exit_signals
from app.main import create_app
from app.settings import Settings
from tests.fakes import SlowLoader
from tests.harness import REPO, free_port


def _fake_model(tmp_path: Path) -> Path:
    """A base path with one version the fake loader accepts (the scanner wants saved_model.pb)."""
    version = tmp_path / "slow" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"fake")
    return version.parent


def _poll_until(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_readyz_is_false_from_sigterm_on_while_a_request_drains(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = tmp_path / "started"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HOTSERVE_MODEL_NAME": "slow",
        "HOTSERVE_MODEL_BASE_PATH": str(_fake_model(tmp_path)),
        "HOTSERVE_VERSION_SETTLE_SECONDS": "0",
        "SLOW_MODEL_DELAY": "2",
        "SLOW_MODEL_STARTED": str(started),
    }
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "tests.slow_app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "30",
    ]  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _poll_until(lambda: _status(url) == 200 or proc.poll() is not None)
            assert proc.poll() is None, log_path.read_text()
            slow: dict[str, httpx.Response] = {}

            def predict() -> None:
                slow["r"] = httpx.post(
                    url + "/v1/models/slow:predict", json={"instances": [1.5]}, timeout=60
                )

            request = threading.Thread(target=predict)
            request.start()
            _poll_until(started.exists)  # the slow request is in the model now
            proc.send_signal(signal.SIGTERM)
            answers_in_flight: list[int | str] = []
            answers_after: list[int | str] = []
            while proc.poll() is None:
                answer = _status(url)
                (answers_in_flight if request.is_alive() else answers_after).append(answer)
            request.join(60)
            assert proc.returncode is not None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert slow["r"].status_code == 200 and slow["r"].json() == {"predictions": [3.0]}
    assert answers_in_flight, "no /readyz answer while the request drained"
    assert set(answers_in_flight + answers_after) <= {503, "refused"}, (
        answers_in_flight,
        answers_after,
    )


def _status(url: str) -> int | str:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return "refused"


async def test_readyz_is_false_during_and_after_the_lifespan_exit(tmp_path: Path) -> None:
    """Without a signal (an embedding server, a test), the lifespan's exit is the notice."""
    settings = Settings(
        model_name="slow",
        model_base_path=str(_fake_model(tmp_path)),
        version_settle_seconds=0,
        drain_timeout_seconds=30,
    )
    loader = SlowLoader(1.0)
    app = create_app(settings, loader=loader)
    stop = asyncio.Event()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def host() -> None:
            async with app.router.lifespan_context(app):
                await stop.wait()

        lifespan = asyncio.get_running_loop().create_task(host())
        with anyio.fail_after(30):
            while (await client.get("/readyz")).status_code != 200:
                await anyio.sleep(0.02)
        predict = asyncio.ensure_future(
            client.post("/v1/models/slow:predict", json={"instances": [2.0]})
        )
        with anyio.fail_after(30):
            while not (loader.servables and loader.servables[-1].calls):
                await anyio.sleep(0.02)  # until the predict is in the model
        stop.set()  # the lifespan starts its exit while the predict is in flight
        during: list[int] = []
        with anyio.fail_after(30):
            while not predict.done():
                during.append((await client.get("/readyz")).status_code)
                await anyio.sleep(0.02)
        await lifespan
        after = await client.get("/readyz")
    assert (await predict).json() == {"predictions": [4.0]}
    # Not ready from the lifespan's first step of shutdown on, while the request still drained.
    assert 503 in during, during
    assert set(during[during.index(503) :]) == {503}, during
    assert after.status_code == 503 and after.json()["shutting_down"] is True


def test_exit_signal_is_noticed_then_passed_on() -> None:
    calls: list[str] = []

    def previous(sig: int, frame: FrameType | None) -> None:
        calls.append("previous")

    original = signal.signal(signal.SIGTERM, previous)
    try:
        with notice_exit_signals(lambda: calls.append("notice")):
            signal.raise_signal(signal.SIGTERM)
            assert calls == ["notice", "previous"]
        assert signal.getsignal(signal.SIGTERM) is previous  # restored on exit
    finally:
        signal.signal(signal.SIGTERM, original)


def test_exit_signals_are_left_alone_outside_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def worker() -> None:
        with notice_exit_signals(lambda: None):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]
