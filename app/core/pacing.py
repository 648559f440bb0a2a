"""Pace a version load so that, while requests are in flight, it takes only a small share of the
core, in pieces short enough that no request waits behind one.

Why: on a core that serving keeps busy, a load's CPU work is stolen from requests. A nice
increment alone does not bound how long the load runs at a stretch: this kernel (EEVDF, HZ=250,
no forced preemption) lets a niced CPU-bound thread run 4.6-5.4 ms while a woken serving thread
waits (`perf sched timehist`, bench_swap), so every request arriving then was ~5 ms late and a
swap's p99 was 2.5-3.6x the steady one (README "Measured: what each swap does"). So the load's
work is cut into units (a checkpoint chunk, one warmup call, one callable...) and between two
units the loading thread *sleeps*, giving the core back voluntarily: after a unit that took `w`
seconds it sleeps `w * (1 - share) / share`, so it uses at most `share` of the time, in pieces
no longer than its longest unit. With no request in flight (for a linger: app.core.registry
`Lease.busy`) it does not sleep at all: an idle server loads at full speed.

A restore's units go one better (`run_steps`, `Piggyback`): while requests are in flight, the
serving threads run them, one right after a model call, within the same share of wall time, and
the loading thread only waits. Why: a unit run on the loading thread shares one core with the
serving threads, and the kernel decides which waits; a unit run by a serving thread after a
model call delays that batch's answers (and the next batch of that thread) by the unit's length,
always, and nothing else. In 32 KiB units
(`restore.BUSY_CHUNK_BYTES`: then an assign op each, ~0.14 ms of CPU under load) that is a
small, even slowdown of every request rather than a few requests caught behind a long unit:
bench_swap, 1 GiB on a saturated core, share 0.05, 11 swaps in three runs: p99 in the swap
window 1.10-1.11x steady pooled per run (0.93-1.18x per swap), against 1.25x when the loading
thread ran them paced (README, "The 1 GiB p99"). What is left is that even slowdown, which only
the share sets: with units that read straight into the variables (half the CPU), share 0.05 took
30-46 s for 1 GiB at 1.15x pooled and 0.025 51-64 s at 1.09x (4 swaps each, one session); 0.025
is the default (`--load_busy_cpu_share`).

`pace()` is what the runtime calls between units. It is a function of the calling thread: the
loading thread (app.core.priority) carries a `Pacer`; any other thread's `pace()` does nothing,
as the thread's niceness is a property of the thread too. This keeps the runtime's and the
wrappers' signatures (Loader.load, Servable.warmup...) free of a parameter only loads use.

Thread contract: `pace()` and `run_steps` block; they are called from the loading thread only,
never the event loop. `Pacer.busy` reads plain values (app.core.registry `Lease`) and may be
called from any thread (a restore asks it per piece, from the thread running the piece).
`PIGGYBACK.after_call()` is called by serving threads (app.core.batcher), never blocks on the
loading thread, and never raises what a step raises.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from app.core.ticker import TICKER

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_PAUSE = 1.0  # seconds; one sleep never exceeds this, whatever the unit took


class Pacer:
    """Sleeps between a load's units while `busy()` says requests are in flight.

    `share`: the fraction (0 < share <= 1) of wall time the load may work while busy; 1 never
    sleeps. A unit's work is its wall time minus the time the loading thread waited for a CPU
    (Linux `/proc/thread-self/schedstat`; elsewhere 0): not its CPU time, since a model call's
    kernels may run on TensorFlow's pool threads while this one blocks, and not its plain wall
    time, which on a core serving keeps busy is mostly waiting to be scheduled (a 0.1 ms
    restore unit then measured ~1.5 ms and the load slept 19 times that: a 64 MiB load took
    16 s instead of ~2). Counters (`units`, `longest`, `slept`, in seconds) feed the log line.
    Not thread-safe but for `busy` and `share` (any thread): one loading thread uses it
    (`paced`), which also closes its file.
    """

    def __init__(self, share: float, busy: Callable[[], bool]) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self._share = share
        self._busy = busy
        self._fd = -1  # the loading thread's /proc/thread-self/schedstat (`start`), or -1
        self._mark = self._now()
        self.units = 0
        self.longest = 0.0
        self.slept = 0.0
        self.idle = 0
        self.piggybacked = 0  # units run by serving threads (Piggyback)

    def start(self) -> None:
        """Bind to the calling thread (the loading thread; `paced` calls it): its run-queue
        wait is read from here on, and the current unit starts now."""
        self.close()
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = -1
        self._mark = self._now()

    def _now(self) -> float:
        """Wall seconds minus the seconds the bound thread has waited on a run queue."""
        wall = time.perf_counter()
        if self._fd < 0:
            return wall
        try:  # "<ns on cpu> <ns waiting on a run queue> <timeslices>"
            waited = int(os.pread(self._fd, 64, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return wall
        return wall - waited

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def share(self) -> float:
        return self._share

    def busy(self) -> bool:
        return self._share < 1.0 and self._busy()

    def restart(self) -> None:
        """The current unit starts now: the time since the last one was not the load's work."""
        self._mark = self._now()

    def idle_unit(self) -> None:
        """Count a unit that ran in serving's idle time (`indivisible`): no sleep."""
        self.units += 1
        self.idle += 1
        self.restart()

    def pace(self) -> None:
        """End one unit of work: sleep if serving is busy (see module docstring)."""
        worked = max(self._now() - self._mark, 0.0)
        self.units += 1
        self.longest = max(self.longest, worked)
        if self.busy():
            pause = min(worked * (1.0 - self._share) / self._share, MAX_PAUSE)
            time.sleep(pause)
            self.slept += pause
        self._mark = self._now()


_local = threading.local()

PIGGYBACK_WAIT = 0.02  # seconds the loading thread waits for serving threads between checks
PIGGYBACK_CREDIT = 0.001  # seconds of step CPU time serving threads may bank, at most


class _Job:
    """One load's steps: an iterator advanced one step at a time by whichever thread holds
    `lock` (a serving thread or the loading thread), never two at once. Each yield announces
    the bytes the next step writes (`next_bytes`); serving threads take only steps of at most
    `max_bytes`."""

    __slots__ = ("done", "error", "lock", "max_bytes", "next_bytes", "share", "steps", "taken")

    def __init__(self, steps: Iterator[int], share: float, max_bytes: int) -> None:
        self.steps = steps
        self.share = share
        self.max_bytes = max_bytes
        self.next_bytes = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.taken = 0  # steps run by serving threads

    def step(self) -> None:
        """Advance one step (`lock` held). The end of the steps, or an exception from one
        (kept for the loading thread to raise), sets `done`."""
        try:
            self.next_bytes = next(self.steps)
        except StopIteration:
            self.done.set()
        except BaseException as exc:  # re-raised in the loading thread by Piggyback.run
            self.error = exc
            self.done.set()

    def servable_step(self) -> bool:
        """Whether a serving thread may take the next step (not too large, not over)."""
        return self.next_bytes <= self.max_bytes and not self.done.is_set()


class Piggyback:
    """Steps of loads, run by serving threads right after their model calls (module docstring).

    The loading thread hands its steps over (`run`) and waits. Each model call ends with
    `after_call()`: it adds the wall time since the previous call times the load's share to a
    credit (at most PIGGYBACK_CREDIT seconds), and while the credit is positive runs one step and
    takes the step's CPU time (`time.thread_time`, which leaves out the time the thread waited for
    the core) off it. So steps take at most `share` of the time while model calls come. The
    loading thread runs a step itself, paced (`Pacer.pace`) as any other unit, when serving
    threads leave it: no model call for PIGGYBACK_WAIT seconds (a long model call, or no
    requests but a lingering `busy`), a credit left unused at its cap (model calls too rare to
    keep the load at its share: a slow model, light traffic), or a step larger than the job's
    `max_bytes`. Thread-safe: a step runs under its job's lock, taken without waiting by serving
    threads (a step already running elsewhere: skip) and with waiting by the loading thread; the
    credit has a lock of its own. One instance per process (`PIGGYBACK`), since all loads share
    the cores: loads running side by side take turns, and share one credit."""

    def __init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._lock = threading.Lock()  # the credit's
        self._credit = 0.0  # seconds
        # time.perf_counter() of the previous after_call while a job waited; the loading
        # thread sees model calls come by its change
        self._last = 0.0

    def run(self, steps: Iterator[int], pacer: Pacer, max_bytes: int) -> None:
        """Run every step of `steps` (each yield ends one and announces the bytes of the next):
        by serving threads while `pacer.busy()`, else here with `pacer.pace()` after each.
        Returns when they are done; raises what a step raised. Blocks; the loading thread."""
        job = _Job(steps, pacer.share, max_bytes)
        self._jobs.append(job)
        try:
            while not job.done.is_set():
                if pacer.busy() and job.servable_step():
                    last = self._last
                    if job.done.wait(PIGGYBACK_WAIT):
                        break
                    idle_credit = self._credit >= PIGGYBACK_CREDIT
                    if self._last != last and not idle_credit and job.servable_step():
                        continue  # serving threads are taking the steps
                with job.lock:
                    if job.done.is_set():
                        break
                    pacer.restart()
                    job.step()
                if not job.done.is_set():
                    pacer.pace()
        finally:
            with job.lock:  # no serving thread may step a job its loader has left
                job.done.set()
                self._jobs.remove(job)
            if job.error is None:
                close = getattr(steps, "close", None)
                if close is not None:
                    close()
            pacer.units += job.taken
            pacer.piggybacked += job.taken
        error, job.error = job.error, None
        if error is not None:
            # Not kept in `job`: job -> error -> traceback -> this frame -> job is a cycle,
            # and what the failed step's frames hold (a restore's buffers) would wait for a
            # full collection.
            try:
                raise error
            finally:
                del error

    def after_call(self) -> None:
        """Run one step of a waiting load if the credit allows. Call from a serving thread
        right after a model call, with no lock held; costs an attribute read when no load
        waits. Never raises what a step raises (the loading thread does)."""
        if not self._jobs:
            return
        try:
            job = self._jobs[0]
        except IndexError:  # the load ended meanwhile
            return
        with self._lock:
            now = time.perf_counter()
            credit = min(self._credit + (now - self._last) * job.share, PIGGYBACK_CREDIT)
            self._last = now
            self._credit = credit
        if credit <= 0.0 or not job.servable_step() or not job.lock.acquire(blocking=False):
            return
        try:
            if not job.servable_step():  # the loading thread took it, or left, meanwhile
                return
            began = time.thread_time()
            job.step()
            spent = time.thread_time() - began
            if not job.done.is_set():  # a unit ended by its yield (as counted by `pace`)
                job.taken += 1
        finally:
            job.lock.release()
        with self._lock:
            self._credit -= spent
        self._jobs.rotate(-1)  # loads running side by side take turns


PIGGYBACK = Piggyback()


def run_steps(steps: Iterator[int], max_bytes: int) -> None:
    """Run a load's steps (each yield of `steps` ends one unit and announces the bytes the next
    step writes): inside a paced load through `PIGGYBACK` (serving threads run the steps of at
    most `max_bytes` while requests are in flight), elsewhere here, each followed by `pace()`.
    Raises what a step raises. Blocks; the loading thread only."""
    pacer: Pacer | None = getattr(_local, "pacer", None)
    if pacer is None or pacer.share >= 1.0:  # unpaced: serving threads must not take steps
        for _ in steps:
            pace()
        return
    PIGGYBACK.run(steps, pacer, max_bytes)


def piggyback_probe() -> Callable[[], bool]:
    """For the loading thread: a function telling, from any thread, whether this load's next
    step would run in a serving thread (a paced load while requests are in flight); a restore
    then cuts smaller units. Always False outside a paced load."""
    pacer: Pacer | None = getattr(_local, "pacer", None)
    if pacer is None:
        return lambda: False
    return pacer.busy


def busy() -> bool:
    """For the loading thread: whether its paced load sees requests in flight (work it may
    skip should be skipped). Always False outside a paced load."""
    pacer: Pacer | None = getattr(_local, "pacer", None)
    return pacer is not None and pacer.busy()


def pace() -> None:
    """Called by the runtime between units of a load (a checkpoint chunk, a warmup call...):
    sleeps per the current thread's Pacer, or returns at once outside a paced load."""
    pacer: Pacer | None = getattr(_local, "pacer", None)
    if pacer is not None:
        pacer.pace()


def indivisible(fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)`, one unit of a load that cannot be cut (a graph import, making a
    callable), so that serving takes the core from it the moment a serving thread wakes.

    Inside a paced load while requests are in flight, `fn` runs under `run_idle`: the time it
    took was serving's idle time, so no sleep follows. Elsewhere `fn` runs in the calling
    thread, then `pace()`. Exceptions propagate. Blocks; call it from the loading thread."""
    pacer: Pacer | None = getattr(_local, "pacer", None)
    if pacer is None or not pacer.busy():
        result = fn(*args)
        pace()
        return result
    try:
        return run_idle(fn, *args)
    finally:
        pacer.idle_unit()


def run_idle(fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` on a fresh thread under SCHED_IDLE (Linux) and wait for it.

    The kernel preempts a SCHED_IDLE thread at once for any normal thread that wakes, where a
    niced thread runs on until its slice ends (~4-5 ms on this kernel: EEVDF, HZ=250), so the
    serving threads never wait behind `fn` for the core (the GIL they still share: Python code
    in `fn` gives it up within the switch interval). But once the kernel picks it, it runs to
    the next tick unless a normal thread wakes: while `fn` runs, the ticker (app.core.ticker
    `TICKER`, when the server started it) wakes its CPU every tick, and the thread is pinned to
    that CPU. The thread ends with `fn`, since an
    unprivileged thread may not leave SCHED_IDLE again. Where SCHED_IDLE is missing or refused,
    `fn` runs at the new thread's inherited priority. The price: on a saturated core `fn` waits
    for idle moments, so use it for short work (milliseconds of CPU). Exceptions propagate.
    Blocks; call it from a worker thread, never the event loop."""

    cpu = TICKER.cpu

    def lower() -> None:
        if hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            except OSError as exc:  # e.g. a seccomp profile forbids it
                log.debug("SCHED_IDLE refused: %s", exc)
        if cpu is not None:
            try:  # where the ticker wakes (app.core.ticker)
                os.sched_setaffinity(0, {cpu})
            except OSError as exc:
                log.debug("idle thread not pinned: %s", exc)

    with TICKER.ticking():
        return on_fresh_thread("hotserve-idle", lower, fn, *args)


def on_fresh_thread(name: str, setup: Callable[[], None], fn: Callable[..., T], *args: object) -> T:
    """Run `setup()` then `fn(*args)` on a new thread called `name` and wait for it; return
    what `fn` returns, or raise what it (or `setup`) raised, in the caller's thread. For work
    whose thread gets its own scheduling (a nice increment, SCHED_IDLE), which must not stick
    to a pooled thread. Blocks."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            setup()
            outcome.append(fn(*args))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


LOAD_SWITCH_INTERVAL = 0.0001  # seconds; sys.getswitchinterval() in a load's `gil_heavy` steps


class _SwitchInterval:
    """Counts the `gil_heavy` steps running; the first one in lowers the switch interval, the
    last one out puts the previous value back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._saved = sys.getswitchinterval()

    def __enter__(self) -> None:
        with self._lock:
            if self._running == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, LOAD_SWITCH_INTERVAL))
            self._running += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                sys.setswitchinterval(self._saved)


_SWITCH = _SwitchInterval()


@contextmanager
def gil_heavy() -> Iterator[None]:
    """Around a load's steps that run Python for milliseconds (TensorFlow's graph import, building
    a restore's ops): inside a paced load the interpreter's switch interval is
    LOAD_SWITCH_INTERVAL (0.1 ms) instead of 5 ms meanwhile (`sys.setswitchinterval`,
    process-wide, put back when the last such step ends); elsewhere nothing changes.

    Why: a thread waiting for the GIL gets it when the holder gives it up or has held it for a
    switch interval, and a load thread preempted by serving (niced, or SCHED_IDLE) keeps the GIL
    it holds: while the load runs Python, every serving thread that wants the GIL may wait a
    whole interval (bench_swap, 64 MiB, 4 swaps each, when the restore's pieces still ran
    Python on the loading thread: p99 swap vs steady 1.35x at 1 ms, 1.25x at 0.1 ms). Only
    around those steps, since the short interval also makes the serving threads hand the GIL
    to each other 50 times as often: with it lowered for a whole load, the demo MLP's requests
    sent while the load's SCHED_IDLE steps (C++ with the GIL released) ran were 1.4-2.6% slower
    than the steady p99, 1.1-1.9% with the interval left alone (3 swaps each). Blocks nothing;
    any thread (the loading thread's pacer decides)."""
    if getattr(_local, "pacer", None) is None:
        yield
        return
    with _SWITCH:
        yield


@contextmanager
def paced(pacer: Pacer) -> Iterator[Pacer]:
    """Make `pacer` the calling thread's for the duration of the block."""
    previous = getattr(_local, "pacer", None)
    _local.pacer = pacer
    pacer.start()
    try:
        yield pacer
    finally:
        _local.pacer = previous
        pacer.close()
