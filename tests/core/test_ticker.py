"""The idle-step ticker (app.core.ticker): a helper process that wakes the SCHED_IDLE steps'
CPU while one runs. Its effect on scheduling is measured by scripts/bench_swap/idle_tick.py and
bench_swap, not here; these tests check that it ticks exactly while a step runs, that steps run
pinned where it wakes, and that it never outlives its users."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core import pacing
from app.core import ticker as ticker_mod
from app.core.ticker import TICKER, Ticker, next_wait
from tests.harness import gone

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE") or not Path("/proc/self/status").exists(),
    reason="Linux scheduling and /proc",
)


def wakeups(pid: int) -> int:
    """The helper's voluntary context switches: two per tick while it ticks."""
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
    """The wake-up count once it stops moving (two reads 50 ms apart agree; a helper starved
    longer on a loaded machine may still add one or two, see `still_after`)."""
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


def still_after(pid: int, count: int) -> None:
    """No ticking 0.2 s after `count` was read: at a 1 ms tick it would add ~400 wake-ups."""
    time.sleep(0.2)
    assert wakeups(pid) <= count + 2


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
        poll(lambda: wakeups(pid) >= idle + 100)  # ~2000 a second at a 1 ms tick
    still_after(pid, settled(pid))


def test_nested_and_concurrent_steps_keep_it_ticking_until_the_last_ends(ticker: Ticker) -> None:
    pid = ticker.pid
    assert pid is not None
    with ticker.ticking():
        with ticker.ticking():
            pass
        start = wakeups(pid)  # the inner step's end did not stop it
        poll(lambda: wakeups(pid) >= start + 50)
    still_after(pid, settled(pid))
    # two steps on two threads, ending in either order
    first, second = threading.Event(), threading.Event()

    def step(done: threading.Event) -> None:
        with ticker.ticking():
            done.wait(10)

    threads = [threading.Thread(target=step, args=(e,)) for e in (first, second)]
    for t in threads:
        t.start()
    first.set()
    threads[0].join()
    start = wakeups(pid)
    poll(lambda: wakeups(pid) >= start + 50)  # the other step still runs
    second.set()
    threads[1].join()
    still_after(pid, settled(pid))


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
    assert not ticker.running and ticker.cpu is None
    assert gone(pid)  # reaped, pipes closed (no ResourceWarning)


def test_it_outlives_a_ctrl_c_to_the_process_group(ticker: Ticker) -> None:
    # SIGINT/SIGTERM reach the whole group; the server may still load in its shutdown grace.
    pid = ticker.pid
    assert pid is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        os.kill(pid, sig)
    idle = wakeups(pid)
    with ticker.ticking():
        poll(lambda: wakeups(pid) >= idle + 20)
    assert ticker.running


def test_a_helper_that_does_not_start_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ticker_mod, "_HELPER", "raise SystemExit(3)")
    t = Ticker()
    t.start(0.001)
    assert not t.running and t.cpu is None
    with t.ticking():  # steps run untouched
        pass
    t.stop()


def test_the_helper_and_steps_go_on_the_cpu_asked_for() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    t = Ticker()
    t.start(0.001, cpu=cpus[0])
    try:
        assert t.cpu == cpus[0] and t.pid is not None
        assert os.sched_getaffinity(t.pid) == {cpus[0]}
    finally:
        t.stop()


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
        still_after(pid, settled(pid))  # stopped with the step
        assert os.sched_getaffinity(0) == mine  # only the step's own thread was pinned
    finally:
        TICKER.stop()
