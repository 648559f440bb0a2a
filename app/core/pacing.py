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

`pace()` is what the runtime calls between units. It is a function of the calling thread: the
loading thread (app.core.priority) carries a `Pacer`; any other thread's `pace()` does nothing,
as the thread's niceness is a property of the thread too. This keeps the runtime's and the
wrappers' signatures (Loader.load, Servable.warmup...) free of a parameter only loads use.

Thread contract: `pace()` blocks (sleeps); it is called from the loading thread only, never the
event loop. `Pacer.busy` is read there without a lock (an int read under the GIL).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

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
    Not thread-safe: one loading thread uses it (`paced`), which also closes its file.
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

    def busy(self) -> bool:
        return self._share < 1.0 and self._busy()

    def idle_unit(self) -> None:
        """Count a unit that ran in serving's idle time (`indivisible`): no sleep."""
        self.units += 1
        self.idle += 1
        self._mark = self._now()

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
    in `fn` gives it up within the switch interval). The thread ends with `fn`, since an
    unprivileged thread may not leave SCHED_IDLE again. Where SCHED_IDLE is missing or refused,
    `fn` runs at the new thread's inherited priority. The price: on a saturated core `fn` waits
    for idle moments, so use it for short work (milliseconds of CPU). Exceptions propagate.
    Blocks; call it from a worker thread, never the event loop."""

    def lower() -> None:
        if hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            except OSError as exc:  # e.g. a seccomp profile forbids it
                log.debug("SCHED_IDLE refused: %s", exc)

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
