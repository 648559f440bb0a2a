"""The idle-step ticker (app.core.ticker): a helper process that wakes the SCHED_IDLE steps'
CPU while one runs. Its effect on scheduling is measured by scripts/bench_swap/idle_tick.py and
bench_swap, not here; these tests check that it ticks exactly while a step runs, that steps run
pinned where it wakes, and that it never outlives its users."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core import pacing
from app.core.ticker import TICKER, Ticker, next_wait
from app.settings import Settings
from tests.harness import REPO, running_app

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE") or not Path("/proc/self/status").exists(),
    reason="Linux scheduling and /proc",
)


def wakeups(pid: int) -> int:
    """The helper's voluntary context switches: one per tick while it ticks."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def settled(pid: int) -> int:
    """The wake-up count once it stops moving (two reads 50 ms apart agree)."""
    last = [-1]

    def still() -> bool:
        now = wakeups(pid)
        same = now == last[0]
        last[0] = now
        return same

    def step() -> bool:
        time.sleep(0.05)
        return still()

    poll(step)
    return last[0]


def gone(pid: int) -> bool:
    """Exited and reaped (no zombie left behind)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


@pytest.fixture
def ticker() -> Iterator[Ticker]:
    t = Ticker()
    t.start(0.001)
    assert t.running and t.pid is not None
    yield t
    t.stop()


def test_it_ticks_only_while_a_step_runs(ticker: Ticker) -> None:
    pid = ticker.pid
    assert pid is not None
    idle = settled(pid)  # blocked on its pipe: no wake-ups
    with ticker.ticking():
        poll(lambda: wakeups(pid) >= idle + 100)  # ~1000 a second
    stopped = settled(pid)
    time.sleep(0.1)
    assert wakeups(pid) == stopped


def test_nested_and_concurrent_steps_keep_it_ticking_until_the_last_ends(ticker: Ticker) -> None:
    pid = ticker.pid
    assert pid is not None
    with ticker.ticking():
        with ticker.ticking():
            pass
        start = wakeups(pid)  # the inner step's end did not stop it
        poll(lambda: wakeups(pid) >= start + 50)
    settled(pid)


def test_it_is_pinned_to_the_servers_highest_cpu(ticker: Ticker) -> None:
    assert ticker.pid is not None and ticker.cpu == max(os.sched_getaffinity(0))
    assert os.sched_getaffinity(ticker.pid) == {ticker.cpu}


def test_the_last_stop_ends_the_helper() -> None:
    t = Ticker()
    t.start(0.001)
    t.start(0.001)  # a second server in the same process shares it
    pid = t.pid
    assert pid is not None
    t.stop()
    assert t.pid == pid and Path(f"/proc/{pid}").exists()
    t.stop()
    assert not t.running and t.cpu is None
    # reaped by stop(): no zombie left behind
    assert gone(pid)
    with t.ticking():  # without a helper a step runs untouched
        pass


def test_a_dead_helper_leaves_steps_untouched(ticker: Ticker) -> None:
    pid = ticker.pid
    assert pid is not None
    os.kill(pid, 9)
    poll(lambda: "State:\tZ" in Path(f"/proc/{pid}/status").read_text())
    with ticker.ticking():
        pass
    assert not ticker.running


@pytest.mark.parametrize(
    ("now", "wait_ms"),
    [(0.0, 1.0), (0.0005, 0.5), (0.001, 1.0), (0.0015, 0.5), (0.002, 3.0), (0.0039, 1.1),
     (1000.0021, 2.9)],
)  # fmt: skip
def test_it_wakes_a_quarter_and_a_half_tick_after_each_tick(now: float, wait_ms: float) -> None:
    # The kernel's ticks fall on multiples of the tick in CLOCK_MONOTONIC (HZ=250: 4 ms).
    assert next_wait(now, 0.004) * 1e3 == pytest.approx(wait_ms, abs=1e-6)


def test_a_tick_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Ticker().start(0.0)


def test_run_idle_ticks_and_pins_its_thread_while_the_step_runs() -> None:
    TICKER.start(0.001)
    try:
        pid, cpu = TICKER.pid, TICKER.cpu
        assert pid is not None and cpu is not None
        mine = os.sched_getaffinity(0)
        before = settled(pid)

        def step() -> tuple[int, set[int], int]:
            start = wakeups(pid)
            poll(lambda: wakeups(pid) >= start + 20, timeout=10.0)
            return os.sched_getscheduler(0), os.sched_getaffinity(0), wakeups(pid)

        policy, affinity, during = pacing.run_idle(step)
        assert policy == os.SCHED_IDLE and affinity == {cpu}
        assert during >= before + 20
        after = settled(pid)
        time.sleep(0.1)
        assert wakeups(pid) == after  # stopped with the step
        assert os.sched_getaffinity(0) == mine  # only the step's own thread was pinned
    finally:
        TICKER.stop()


@pytest.mark.parametrize(
    ("tick", "share", "expected"), [(1000, 0.025, True), (0, 0.025, False), (1000, 1.0, False)]
)
async def test_a_server_loading_tensorflow_runs_the_ticker_while_it_serves(
    tick: int, share: float, expected: bool
) -> None:
    settings = Settings(
        model_name="half_plus_two",
        model_base_path=str(REPO / "models" / "half_plus_two"),
        load_idle_tick_micros=tick,
        load_busy_cpu_share=share,
    )
    async with running_app(settings):
        assert TICKER.running is expected
        pid = TICKER.pid
    assert not TICKER.running
    if pid is not None:
        assert gone(pid)
