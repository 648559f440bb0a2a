"""Cut a load's SCHED_IDLE steps short for serving: a helper process that, while such a step
runs, wakes the step's CPU twice in every scheduler tick.

Why: a load's steps that cannot be cut (a graph import, making a callable: milliseconds of C++
each) run on a SCHED_IDLE thread while requests are in flight (app.core.pacing `run_idle`). The
kernel preempts a SCHED_IDLE thread the moment a normal thread *wakes*, but its fair scheduler
still gives it its weight's share (3 against a normal thread's 1024), and once it picks it, it
runs to the next scheduler tick (4 ms at HZ=250; nothing ends the slice sooner without a
high-resolution tick). On a core that serving saturates no serving thread wakes meanwhile: they
are all runnable, waiting. So every ~1.2 s of such a step no request was answered for 4 ms, and
a swap window's longest span without an answer was 6-7.5 ms against 2.6-4 ms in steady windows
(bench_swap, README "Measured: what each swap does").

Those stretches start exactly at a tick: the scheduler picks the SCHED_IDLE thread when a tick
ends a serving thread's slice, and this kernel's ticks fall on multiples of the tick in
CLOCK_MONOTONIC (`scripts/bench_swap/idle_tick.py`'s gaps start at 0 mod 4 ms). A helper that
wakes is a normal task waking: the kernel preempts the SCHED_IDLE thread for it at once, and
when the helper sleeps again picks the waiting serving threads. So the helper wakes a quarter
and a half tick after each tick (1 and 2 ms at HZ=250): a stretch is cut after 1 ms, or 2 if
the kernel picks the SCHED_IDLE thread again. Micro-benchmark (`idle_tick.py`: a CPU-bound
SCHED_IDLE process beside a busy normal one on one core, 5 s): the busy one's longest gap
4.0 ms without the helper, 2.0 ms with it (most gaps 1.1 ms); the SCHED_IDLE process got
about the same CPU. Why not a plain 1 ms period: on this VM a wake-up costs the serving
threads tens of microseconds (cache, a world switch for the timer), and bench_swap with a
1 kHz helper: requests during a load 5% slower at the median, p99 in the swap window 1.13-1.22x
steady against 1.03-1.10x without (MLP and 64 MiB, 4 swaps each). At nice 19 the helper's
wake-ups did not preempt serving threads, but, queued behind them, came too late to cut the
stretches (spans 6-33 ms).

A process, not a thread: a Python thread would take the GIL after every wake-up, contending with
the serving threads it is there to help. The helper (`python -I -S`, ~10 ms to start, started
with the server, never during a swap) blocks on a pipe until told to tick and ticks with
`select` timeouts; it exits when the pipe closes, so it never outlives the server.

With several CPUs the kernel may wake the helper on a CPU other than the step's, so the helper
is pinned to one CPU of the server's (the highest) and `run_idle` pins its step thread there too.

Thread contract: every method may be called from any thread; `start` and `stop` block (a spawn,
a wait), so call them from a worker thread; `ticking` blocks only on a pipe write of one byte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TICK = 0.004  # seconds: the scheduler tick of a HZ=250 kernel (`--load_idle_tick_micros`)
# Where in each tick the helper wakes, as fractions of the tick (module docstring).
TICK_OFFSETS = (0.25, 0.5)

# The directory holding `app` (the repository, or site-packages), appended after the stdlib.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_HELPER = "import sys; sys.path.append(sys.argv[1]); from app.core.ticker import main; main()"
READY = b"r"  # the helper's first byte on stdout: its loop runs
START_TIMEOUT = 5.0  # seconds to wait for READY


def next_wait(now: float, tick: float, offsets: tuple[float, ...] = TICK_OFFSETS) -> float:
    """Seconds from `now` (CLOCK_MONOTONIC seconds) to the helper's next wake-up: the nearest
    `offsets` fraction of a tick after a multiple of `tick` seconds, never 0."""
    phase = now % tick
    return min((o * tick - phase) % tick or tick for o in offsets)


def main() -> None:
    """The helper process's loop (argv: package root, tick seconds). Writes READY, then reads
    b"1" (tick), b"0" (stop ticking) or end of file (exit: the server closed the pipe, or
    died) from stdin; while ticking, sleeps in `select` until `next_wait`. Ignores SIGINT and
    SIGTERM, which a terminal or a service manager sends the whole process group: the server
    may still load during its shutdown grace, and ends the helper itself. Runs in the helper
    only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tick = float(sys.argv[2])
    os.write(1, READY)
    on = False
    while True:
        wait = next_wait(time.monotonic(), tick) if on else None
        ready, _, _ = select.select([0], [], [], wait)
        if ready:
            data = os.read(0, 64)
            if not data:
                return
            on = data[-1:] == b"1"


class Ticker:
    """The helper process (module docstring), shared by every load of the process (`TICKER`).

    `start(tick)`/`stop()` are counted: the first start spawns the helper, the last stop ends it
    (a test process may run several servers). `ticking()` brackets one SCHED_IDLE step; nested
    or concurrent brackets keep the helper ticking until the last one ends. Without a running
    helper (not started, spawn failed, not Linux, helper died) `ticking()` does nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ticking = 0
        self.cpu: int | None = None  # the CPU the helper (and the steps) are pinned to

    @property
    def running(self) -> bool:
        """Whether a helper runs (started, and not found dead)."""
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        """The helper's process id, or None."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def start(self, tick: float = DEFAULT_TICK, cpu: int | None = None, nice: int = 0) -> None:
        """Spawn the helper unless it runs and wait (up to START_TIMEOUT seconds) for its
        loop: while ticking it wakes TICK_OFFSETS of a tick after every multiple of `tick`
        seconds of CLOCK_MONOTONIC, where the kernel's scheduler ticks fall (module docstring).
        `cpu`: where the helper and the steps run (one of this process's CPUs; default the
        highest; `--workers` spread theirs); `nice`: the helper's nice value (0; at 19 its
        wake-ups, queued behind serving threads, came too late to cut a stretch). Raises
        ValueError for `tick` <= 0; otherwise never raises: on failure (no `sched_setaffinity`,
        no interpreter to spawn, a helper that does not start) the steps run untouched and the
        reason is logged. Blocks (a spawn and a read): a worker thread, never the event loop."""
        if tick <= 0:
            raise ValueError(f"tick must be > 0 seconds, got {tick}")
        with self._lock:
            self._users += 1
            if self._proc is not None:
                return
            if not hasattr(os, "sched_setaffinity") or not hasattr(os, "SCHED_IDLE"):
                return
            if not sys.executable or getattr(sys, "frozen", False):
                log.warning("no idle-step ticker: no Python interpreter to run it")
                return
            try:
                cpus = os.sched_getaffinity(0)
                pinned = cpu if cpu in cpus else max(cpus)
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _HELPER, _PACKAGE_ROOT, repr(tick)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    close_fds=True,
                )
            except Exception as exc:  # a ticker is an optimisation: never fail start-up for it
                log.warning("no idle-step ticker: %r", exc)
                return
            if not self._started(proc):
                log.warning("no idle-step ticker: the helper did not start")
                self._end(proc)
                return
            try:
                os.sched_setaffinity(proc.pid, {pinned})
            except OSError as exc:  # it runs unpinned: still a wake-up on a one-CPU server
                log.debug("idle-step ticker not pinned: %s", exc)
            if nice:
                try:
                    os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
                except OSError as exc:
                    log.debug("idle-step ticker not niced: %s", exc)
            self._proc = proc
            self.cpu = pinned
            log.info(
                "idle-step ticker: pid %d on CPU %d, tick %.3f ms", proc.pid, pinned, tick * 1e3
            )

    @staticmethod
    def _started(proc: subprocess.Popen[bytes]) -> bool:
        if proc.stdout is None:
            return False
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        return bool(ready) and os.read(proc.stdout.fileno(), 1) == READY

    def stop(self) -> None:
        """The last user's stop ends the helper (closing its pipe) and waits for it. Blocks
        (up to ~2 s): a worker thread, never the event loop."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            if self._users or self._proc is None:
                return
            proc, self._proc = self._proc, None
            self.cpu = None
            self._ticking = 0
        self._end(proc)

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        """Close the helper's pipes (it exits at end of file) and reap it; kill it if it has
        not exited in 2 s."""
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            log.warning("idle-step ticker pid %d did not exit: killed", proc.pid)
            proc.kill()
            proc.wait()

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """Keep the helper ticking for the duration of the block (one SCHED_IDLE step)."""
        self._switch(+1)
        try:
            yield
        finally:
            self._switch(-1)

    def _switch(self, delta: int) -> None:
        dead = None
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                return
            before = self._ticking
            self._ticking = max(before + delta, 0)
            if (before == 0) == (self._ticking == 0):
                return  # no change between ticking and not
            try:
                proc.stdin.write(b"1" if self._ticking else b"0")
                proc.stdin.flush()
            except OSError as exc:  # the helper died: steps run untouched from now on
                log.warning("idle-step ticker gone: %s", exc)
                dead, self._proc, self.cpu = proc, None, None
        if dead is not None:
            self._end(dead)


TICKER = Ticker()
