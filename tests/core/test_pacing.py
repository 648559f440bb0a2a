"""Load pacing: a load sleeps between its units while requests are in flight, in proportion to
the work it just did; never when idle, never outside a load thread (app.core.pacing)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

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


def _steps(
    n: int, log: list[tuple[int, float]], cpu: float, sizes: list[int] | None = None
) -> Iterator[int]:
    """n steps, each spinning `cpu` seconds and noting (thread, its CPU time); each yield
    announces the next step's bytes (`sizes`, default 0). Fails if two threads run at once."""
    running = threading.Lock()
    yield (sizes or [0])[0]
    for i in range(n):
        assert running.acquire(blocking=False), "two threads ran steps at once"
        began = time.thread_time()
        spin(cpu)
        log.append((threading.get_native_id(), time.thread_time() - began))
        running.release()
        if i + 1 < n:
            yield (sizes or [0] * n)[i + 1]


def _load(
    steps: Iterator[int], pacer: Pacer, max_bytes: int = 1
) -> tuple[int, BaseException | None]:
    """Run `steps` as a paced load on a thread of its own; (its native id, what it raised)."""
    out: list[int] = []
    error: list[BaseException] = []

    def load() -> None:
        out.append(threading.get_native_id())
        try:
            with paced(pacer):
                pacing.run_steps(steps, max_bytes)
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the load hung"
    return out[0], (error[0] if error else None)


class _Serving:
    """`threads` serving threads making model calls of `call` seconds (spinning), each
    followed by `PIGGYBACK.after_call()`, until stopped; `calls` holds every call's end."""

    def __init__(self, call: float, threads: int = 1, gap: float = 0.0) -> None:
        self.calls: list[float] = []
        self.ids: set[int] = set()
        self._stop = threading.Event()
        self._call, self._gap = call, gap
        self._threads = [threading.Thread(target=self._serve) for _ in range(threads)]

    def _serve(self) -> None:
        self.ids.add(threading.get_native_id())
        while not self._stop.is_set():
            spin(self._call)
            if self._gap:
                time.sleep(self._gap)
            self.calls.append(time.perf_counter())
            pacing.PIGGYBACK.after_call()

    def __enter__(self) -> _Serving:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_while_busy_serving_threads_run_the_steps_within_the_share() -> None:
    log: list[tuple[int, float]] = []
    pacer = Pacer(0.2, lambda: True)
    with _Serving(0.0003, threads=2) as serving:
        _, error = _load(_steps(40, log, 0.001), pacer)
    assert error is None
    assert len(log) == 40
    # Serving threads run the steps; the loading thread only when the credit sat unused at its
    # cap for a while (here: a serving thread holding the GIL for a 5 ms switch interval).
    by_serving = [cpu for thread, cpu in log if thread in serving.ids]
    assert len(by_serving) >= 30
    assert pacer.piggybacked >= 30
    # The credit: the steps' CPU time is at most the share of the calls' span, plus the banked
    # credit and the one step per serving thread that may overdraw it.
    work = sum(by_serving)
    span = serving.calls[-1] - serving.calls[0]
    assert work <= 0.2 * span + pacing.PIGGYBACK_CREDIT + 2 * max(by_serving)


def test_a_step_too_large_for_serving_threads_runs_on_the_loading_thread() -> None:
    log: list[tuple[int, float]] = []
    sizes = [0, 0, 10, 0, 0]  # the third step writes 10 bytes: more than max_bytes
    pacer = Pacer(0.5, lambda: True)
    with _Serving(0.0003) as serving:
        loader, error = _load(_steps(5, log, 0.0005, sizes), pacer, max_bytes=1)
    assert error is None
    threads = [thread for thread, _ in log]
    assert threads[2] == loader
    assert set(threads[:2] + threads[3:]) & serving.ids  # the small ones went to serving


def test_rare_model_calls_do_not_hold_the_load_back() -> None:
    """Calls every ~30 ms earn more credit than one step uses: the loading thread runs steps
    too (paced), so the load is not held to one step per model call."""
    log: list[tuple[int, float]] = []
    pacer = Pacer(0.5, lambda: True)
    with _Serving(0.0001, gap=0.03) as serving:
        loader, error = _load(_steps(30, log, 0.0002), pacer)
    assert error is None
    threads = [thread for thread, _ in log]
    assert loader in threads
    assert len(serving.calls) < 30  # fewer calls than steps: the loading thread ran the rest


def test_busy_without_model_calls_the_loading_thread_runs_the_steps_paced() -> None:
    log: list[tuple[int, float]] = []
    pacer = Pacer(0.5, lambda: True)
    loader, error = _load(_steps(3, log, 0.001), pacer)
    assert error is None
    assert {thread for thread, _ in log} == {loader}
    assert pacer.piggybacked == 0
    assert pacer.slept > 0  # each step it ran was paced


def test_idle_the_loading_thread_runs_the_steps_at_full_speed() -> None:
    log: list[tuple[int, float]] = []
    pacer = Pacer(0.05, lambda: False)
    loader, error = _load(_steps(5, log, 0.0005), pacer)
    assert error is None
    assert {thread for thread, _ in log} == {loader}
    assert pacer.units == 5  # pace() after each step ending with a yield (the first: none)
    assert pacer.slept == 0.0


def test_an_unpaced_load_never_hands_steps_over() -> None:
    log: list[tuple[int, float]] = []
    pacer = Pacer(1.0, lambda: True)
    with _Serving(0.0003):
        loader, error = _load(_steps(10, log, 0.0005), pacer)
    assert error is None
    assert {thread for thread, _ in log} == {loader}


def test_a_step_failing_in_a_serving_thread_is_raised_in_the_loading_thread() -> None:
    ran: list[int] = []

    def steps() -> Iterator[int]:
        yield 0
        yield 0
        ran.append(threading.get_native_id())
        raise ValueError("bad piece")

    with _Serving(0.0002) as serving:  # after_call never raises: the step's error is kept
        _, error = _load(steps(), Pacer(0.5, lambda: True))
    assert isinstance(error, ValueError)
    assert str(error) == "bad piece"
    assert ran and ran[0] in serving.ids


def test_after_call_without_a_load_does_nothing() -> None:
    seen = (pacing.PIGGYBACK._last, pacing.PIGGYBACK._credit)
    pacing.PIGGYBACK.after_call()
    assert (pacing.PIGGYBACK._last, pacing.PIGGYBACK._credit) == seen  # no call counted


def _release_steps(log: list[int]) -> Iterator[int]:
    """Two steps, as app.runtime.memory's release: each notes the thread that ran it."""
    log.append(threading.get_native_id())
    yield 0
    log.append(threading.get_native_id())


def _serve_steps(priority: LoadPriority, steps: Iterator[int]) -> int:
    """priority.serve_steps(steps) on a worker thread of its own; that thread's native id."""
    out: list[int] = []

    def work() -> None:
        out.append(threading.get_native_id())
        priority.serve_steps(steps)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "serve_steps hung"
    return out[0]


def test_release_steps_run_on_serving_threads_while_requests_are_in_flight() -> None:
    log: list[int] = []
    priority = LoadPriority(5, share=0.05, busy=lambda: True)
    with _Serving(0.0003) as serving:
        worker = _serve_steps(priority, _release_steps(log))
    assert len(log) == 2
    assert set(log) <= serving.ids and worker not in log


def test_release_steps_run_in_the_calling_thread_when_idle_or_unpaced() -> None:
    for priority in (
        LoadPriority(5, share=0.05, busy=lambda: False),
        LoadPriority(5, share=1.0, busy=lambda: True),
    ):
        log: list[int] = []
        with _Serving(0.0003):
            worker = _serve_steps(priority, _release_steps(log))
        assert log == [worker, worker]


def test_release_memory_hands_its_two_steps_to_the_runner() -> None:
    from app.runtime import memory

    memory.note_unload()
    ran: list[int] = []

    def runner(steps: Iterator[int]) -> None:
        for _ in steps:
            ran.append(1)

    memory.release_memory(runner)
    assert ran == [1]  # one yield between the collection and the trim
