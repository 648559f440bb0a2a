"""The harness itself: a process a test starts is stopped on every path, failed starts included."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import LIVE, ServerProcess, gone, server, spawn, stop_process

# Stands in for a server: alive, listening nowhere, so it never becomes ready.
NEVER_READY = [sys.executable, "-c", "import time; time.sleep(120)"]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` s pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_server_that_never_becomes_ready_is_stopped(tmp_path: Path) -> None:
    s = ServerProcess([])
    s.args = NEVER_READY
    with pytest.raises(TimeoutError):
        s.start(tmp_path / "log", ready_timeout=0.5)
    assert s.proc is not None
    assert s.proc.poll() is not None  # reaped, not running behind the suite's back
    assert s.proc not in LIVE


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    s = ServerProcess([])
    s.args = [sys.executable, "-c", "print('no models here'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="exited 3") as info:
        s.start(tmp_path / "log")
    assert "no models here" in str(info.value)
    assert s.proc is not None and s.proc not in LIVE


def test_the_server_context_stops_on_a_failed_start(tmp_path: Path) -> None:
    before = set(LIVE)
    with pytest.raises(TimeoutError), server([], tmp_path / "log", ready_timeout=0.0):
        pass  # `python -m app` without models never gets ready within 0 s
    assert set(LIVE) == before


def test_stop_process_takes_the_children_along(tmp_path: Path) -> None:
    """SIGTERM reaches the shell only; its child is killed with the process group."""
    pid_file = tmp_path / "pid"
    with (tmp_path / "log").open("wb") as log:
        proc = spawn(["sh", "-c", f"sleep 120 & echo $! > {pid_file}; wait"], log)
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"))
        child = int(pid_file.read_text())
        stop_process(proc, timeout=5)
    assert proc not in LIVE
    assert wait_for(lambda: gone(child))  # an orphan is reaped by init shortly after


def test_stop_process_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    script = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(120)"
    )
    with (tmp_path / "log").open("wb") as log:
        proc = spawn([sys.executable, "-c", script, str(armed)], log)
        assert wait_for(armed.exists)
        assert stop_process(proc, timeout=0.5) == -9  # SIGKILL after the grace period
    assert stop_process(proc) == proc.returncode  # idempotent
