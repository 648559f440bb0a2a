"""Run version loads and warmups at a lower CPU priority than serving (Linux thread niceness).

Why: on a small machine a load competes with the event loop and the inference threads for the
same cores; requests during a swap then took about twice as long (bench_swap). A nice increment
of 5 on the loading thread lets serving win the CPU while a load still finishes promptly (19
starved loads to ~9 s; 10 doubled them).

Each call runs on a fresh thread that lowers only its own priority, so no worker thread of the
shared pools is left niced (an unprivileged process cannot raise it back). The very first load
runs at normal priority: TensorFlow creates its shared compute threads during the first session,
and threads inherit their creator's niceness, which would slow every later model call.

While a load runs its Python-heavy steps, the interpreter's switch interval is 0.1 ms instead
of 5 ms (app.core.pacing `gil_heavy`).

Each call is also paced (app.core.pacing): while requests are in flight the load sleeps
between its units of work, so it takes at most `share` of the core in short pieces; a restore's
units are run by the serving threads instead, each after a model call, within the same share.

Thread contract: `call` blocks; call it from a worker thread (the load limiter), never the loop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from app.core.pacing import Pacer, on_fresh_thread, paced, run_idle, run_steps

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoadPriority:
    """Shared by every model of one server: remembers whether TensorFlow's pools exist yet."""

    def __init__(
        self, increment: int, share: float = 1.0, busy: Callable[[], bool] = lambda: False
    ) -> None:
        """`increment`: nice increment of the loading thread; `share`/`busy`: its Pacer's
        (the fraction of the core a load may take while `busy()`, 1 = unpaced)."""
        self._increment = increment if hasattr(os, "setpriority") else 0
        self._share = share
        self._busy = busy
        self._primed = False
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            first = not self._primed
            self._primed = True
        if first:
            return fn(*args)
        pacer = Pacer(self._share, self._busy)
        try:
            if self._increment <= 0:
                with paced(pacer):
                    return fn(*args)
            return self._niced(pacer, fn, *args)
        finally:
            if pacer.slept or pacer.piggybacked:
                log.debug(
                    "paced %s: %d units (%d run by serving threads), longest %.2f ms, slept %.2f s",
                    getattr(fn, "__qualname__", fn),
                    pacer.units,
                    pacer.piggybacked,
                    pacer.longest * 1e3,
                    pacer.slept,
                )

    def idle(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` (short work beside a swap: closing the old version's session)
        where it cannot delay requests: under SCHED_IDLE (`pacing.run_idle`) while they are in
        flight, else in the calling thread. The heap trim does not run here: it holds malloc's
        arena locks for milliseconds at a stretch (see Versions.release). Blocks."""
        if self._share < 1.0 and self._busy():
            return run_idle(fn, *args)
        return fn(*args)

    def serve_steps(self, steps: Iterator[int]) -> None:
        """Run `steps` (short work beside a swap, each yield ending one step: the memory release
        after an unload, app.runtime.memory `release_memory`) where a step delays one batch by
        its own length and nothing else: while requests are in flight, on the serving threads,
        each right after a model call within the load share (app.core.pacing `Piggyback`);
        else, or once requests stop, in the calling thread. Returns when every step ran;
        raises what a step raised. Blocks; a worker thread, never the event loop."""
        if self._share < 1.0 and self._busy():
            with paced(Pacer(self._share, self._busy)):
                run_steps(steps, max_bytes=0)
            return
        for _ in steps:
            pass

    def _niced(self, pacer: Pacer, fn: Callable[..., T], *args: object) -> T:
        def lower() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice())
            except OSError as exc:  # e.g. a seccomp profile forbids it: load at normal priority
                log.debug("could not lower the load thread's priority: %s", exc)

        def load() -> T:
            with paced(pacer):
                return fn(*args)

        return on_fresh_thread("hotserve-load", lower, load)

    def _nice(self) -> int:
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return min(current + self._increment, 19)
