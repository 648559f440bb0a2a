"""The shutdown contract (app.shutdown) with a real `hotserve` process, real signals and
concurrent clients: the pre-stop grace, zero failed requests among those sent before the signal
and during the grace, the exit budget, and the second signal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.harness import REPO, ServerProcess, free_port

HALF_PLUS_TWO = REPO / "models" / "half_plus_two"
ADMIN_TOKEN = "shutdown-admin-token-0123456789"


@dataclass
class Outcome:
    sent: float  # time.monotonic() when the request was sent
    ok: bool
    detail: str = ""


@dataclass
class Load:
    """Closed-loop clients, each on its own keep-alive connection, recording every request."""

    url: str
    clients: int
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, k: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                x = float(k)
                sent = time.monotonic()
                try:
                    r = client.post(self.url, json={"instances": [x]})
                    good = r.status_code == 200 and r.json() == {
                        "predictions": [0.5 * x + 3]
                    }  # version 2: b = 3
                    self.outcomes.append(Outcome(sent, good, f"{r.status_code} {r.text[:80]}"))
                except httpx.HTTPError as exc:
                    self.outcomes.append(Outcome(sent, False, repr(exc)))
                    time.sleep(0.01)  # refused: do not spin

    def __enter__(self) -> Load:
        for k in range(self.clients):
            t = threading.Thread(target=self._client, args=(k,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _readyz(url: str) -> int | str:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return "refused"


def _wait(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_sigterm_under_load_with_a_grace_drops_nothing(tmp_path: Path) -> None:
    grace, budget = 2.0, 20.0
    srv = ServerProcess(
        [
            "--model_name=half",
            f"--model_base_path={HALF_PLUS_TWO}",
            f"--shutdown_grace_seconds={grace}",
            f"--shutdown_timeout_seconds={budget}",
        ]
    )
    srv.start(tmp_path / "server.log")
    assert srv.proc is not None
    try:
        ready: list[tuple[float, int | str]] = []
        with Load(srv.url + "/v1/models/half:predict", clients=8) as load:
            _wait(lambda: len(load.outcomes) > 200, 60)
            signalled = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            while srv.proc.poll() is None and time.monotonic() < signalled + budget + 5:
                ready.append((time.monotonic(), _readyz(srv.url)))
                time.sleep(0.05)
            load.stop.set()
        exited = time.monotonic()
        assert srv.proc.poll() is not None, "still running past the budget"
    finally:
        srv.stop()
    log = srv.log()
    assert srv.proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), log
    assert exited - signalled < budget, log
    # Zero failures among the requests sent before the signal and during the grace.
    protected = [o for o in load.outcomes if o.sent < signalled + grace]
    failed = [o for o in protected if not o.ok]
    assert not failed, (failed[:5], log[-3000:])
    during_grace = [o for o in protected if o.sent >= signalled]
    assert len(during_grace) > 50, "the grace served too little to mean anything"
    # /readyz: 503 from the signal on (refused once the listener closed), never 200 again.
    answers = [code for _, code in ready]
    assert answers and set(answers) <= {503, "refused"}, answers
    assert 503 in [code for t, code in ready if t < signalled + grace], answers
    # Once the grace is over the server stops taking requests (and the clients see it).
    assert any(o.sent >= signalled + grace and not o.ok for o in load.outcomes)
    assert "shutdown: signal received" in log, log


@contextlib.contextmanager
def _slow_server(
    tmp_path: Path, delay: float, *flags: str, load_delay: float = 0.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The real `hotserve` command serving the fake slow model; killed if a test leaves it."""
    version = tmp_path / "slow" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"fake")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HOTSERVE_HOST": "127.0.0.1",
        "SLOW_MODEL_DELAY": str(delay),
        "SLOW_MODEL_LOAD_DELAY": str(load_delay),
        "HOTSERVE_ADMIN_TOKEN": ADMIN_TOKEN,  # for `_in_flight`
    }
    cmd = [
        sys.executable, "-m", "tests.integration.slow_cli", f"--rest_api_port={port}",
        "--model_name=slow", f"--model_base_path={version.parent}",
        "--version_settle_seconds=0", *flags,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "server.log").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            want = 200 if load_delay == 0 else 503  # a slow load: up (healthz) but not ready
            _wait(lambda: proc.poll() is not None or _readyz(url) == want, 60)
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _in_flight(url: str) -> int:
    """Requests holding the slow model's version now (the admin API's listing)."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    doc = httpx.get(url + "/admin/v1/models/slow", headers=auth, timeout=5).json()
    return sum(int(v["in_flight"]) for v in doc["versions"])


def _stuck_request(url: str) -> threading.Thread:
    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server is made to give up on it
            httpx.post(url + "/v1/models/slow:predict", json={"instances": [1.0]}, timeout=120)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_the_exit_budget_holds_while_a_request_never_finishes(tmp_path: Path) -> None:
    budget = 4.0
    flags = (f"--shutdown_timeout_seconds={budget}", "--drain_timeout_seconds=60")
    with _slow_server(tmp_path, 60.0, *flags) as (proc, url):
        _stuck_request(url)
        _wait(lambda: _in_flight(url) == 1, 10)  # it reached the model (and sleeps 60 s there)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(budget + 10)
        took = time.monotonic() - signalled
    log = (tmp_path / "server.log").read_text()
    assert took < budget + 1.0, (took, log)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), log


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    flags = ("--shutdown_timeout_seconds=25", "--shutdown_grace_seconds=10")
    with _slow_server(tmp_path, 60.0, *flags) as (proc, url):
        _stuck_request(url)
        proc.send_signal(signal.SIGTERM)
        _wait(lambda: _readyz(url) == 503, 10)
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        took = time.monotonic() - second
    log = (tmp_path / "server.log").read_text()
    assert took < 2.0, (took, log)
    assert proc.returncode == 128 + signal.SIGINT, log
    assert "second signal" in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_no_grace_by_default_and_a_clean_exit(tmp_path: Path, sig: signal.Signals) -> None:
    with _slow_server(tmp_path, 0.0) as (proc, _):
        started = time.monotonic()
        proc.send_signal(sig)
        proc.wait(20)
        took = time.monotonic() - started
    log = (tmp_path / "server.log").read_text()
    assert took < 10, log
    assert "END" in log, log  # the version was unloaded, not abandoned
    assert "budget" not in log, log


def test_a_load_in_progress_does_not_hold_the_exit_past_the_budget(tmp_path: Path) -> None:
    """TensorFlow cannot interrupt a load running in its thread: the reconciler is cancelled, the
    load's thread is left to the budget, and the process exits within it."""
    budget = 4.0
    with _slow_server(tmp_path, 0.0, f"--shutdown_timeout_seconds={budget}", load_delay=60.0) as (
        proc,
        _,
    ):
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(budget + 10)
        took = time.monotonic() - signalled
    log = (tmp_path / "server.log").read_text()
    assert took < budget + 1.0, (took, log)
    assert "LOADING" in log and "AVAILABLE" not in log, log
