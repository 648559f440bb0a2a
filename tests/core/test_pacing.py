"""Load pacing: a load sleeps between its units while requests are in flight, in proportion to
the work it just did; never when idle, never outside a load thread (app.core.pacing)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from app.core import pacing
from app.core.pacing import MAX_PAUSE, Pacer, paced
from app.core.priority import LoadPriority


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_busy_sleeps_in_proportion_to_the_unit() -> None:
    p = Pacer(0.25, lambda: True)
    spin(0.004)
    p.pace()
    assert p.units == 1
    assert p.longest > 0  # the spin's wall time less any wait for the CPU (schedstat)
    # share 1/4: three times the work is given back as sleep
    assert p.slept == pytest.approx(p.longest * 3)


def test_idle_or_unpaced_never_sleeps() -> None:
    for pacer in (Pacer(0.05, lambda: False), Pacer(1.0, lambda: True)):
        spin(0.002)
        pacer.pace()
        pacer.pace()
        assert pacer.units == 2
        assert pacer.slept == 0.0


def test_one_pause_is_capped() -> None:
    p = Pacer(0.001, lambda: True)
    spin(0.002)  # would ask for ~2 s of sleep
    p.pace()
    assert p.slept == MAX_PAUSE


def test_share_out_of_range_is_refused() -> None:
    for share in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="share"):
            Pacer(share, lambda: True)


def test_pace_belongs_to_the_thread_that_runs_the_load() -> None:
    p = Pacer(1.0, lambda: True)
    pacing.pace()  # outside a paced block: nothing
    with paced(p):
        pacing.pace()
        other = threading.Thread(target=pacing.pace)  # another thread is not the load's
        other.start()
        other.join()
        pacing.pace()
    pacing.pace()
    assert p.units == 2


def test_loads_after_the_first_are_paced_while_busy() -> None:
    busy = [False]
    priority = LoadPriority(5, share=0.5, busy=lambda: busy[0])
    seen: list[Pacer | None] = []

    def load() -> None:
        spin(0.002)
        pacing.pace()
        seen.append(getattr(pacing._local, "pacer", None))

    priority.call(load)  # the first load (TensorFlow's pools are made): not paced
    assert seen[-1] is None
    busy[0] = True
    priority.call(load)
    first = seen[-1]
    assert first is not None and first.units == 1 and first.slept > 0
    priority_inline = LoadPriority(0, share=0.5, busy=lambda: True)
    priority_inline.call(load)
    priority_inline.call(load)  # nice 0 runs in the caller's thread, paced all the same
    second = seen[-1]
    assert second is not None and second is not first and second.slept > 0
    assert getattr(pacing._local, "pacer", None) is None  # the caller's thread is left as is


def policy() -> tuple[int, int]:
    return threading.get_native_id(), os.sched_getscheduler(0)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_an_indivisible_unit_runs_under_sched_idle_only_while_busy() -> None:
    me = threading.get_native_id()
    busy = [True]
    p = Pacer(0.05, lambda: busy[0])
    with paced(p):
        tid, pol = pacing.indivisible(policy)
        assert tid != me and pol == os.SCHED_IDLE  # a fresh thread, preempted by any waker
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the loading thread is left as is
        assert (p.units, p.idle, p.slept) == (1, 1, 0.0)  # idle time owes no sleep
        busy[0] = False
        assert pacing.indivisible(policy) == (me, os.sched_getscheduler(0))
        assert p.units == 2

        def boom(x: int) -> None:
            raise ValueError(f"bad {x}")

        busy[0] = True
        with pytest.raises(ValueError, match="bad 7"):
            pacing.indivisible(boom, 7)
    assert pacing.indivisible(policy) == (me, os.sched_getscheduler(0))  # outside a load


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_unload_work_runs_idle_only_while_requests_are_in_flight() -> None:
    me = threading.get_native_id()
    busy = [True]
    priority = LoadPriority(5, share=0.05, busy=lambda: busy[0])
    tid, pol = priority.idle(policy)
    assert tid != me and pol == os.SCHED_IDLE
    busy[0] = False
    assert priority.idle(policy) == (me, os.sched_getscheduler(0))
    busy[0] = True
    unpaced = LoadPriority(5, share=1.0, busy=lambda: True)
    assert unpaced.idle(policy) == (me, os.sched_getscheduler(0))
