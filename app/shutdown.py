"""The shutdown contract of `hotserve`: a pre-stop grace, one bounded budget, a second signal.

Timeline from the first SIGTERM/SIGINT (t=0), with G = --shutdown_grace_seconds and
B = --shutdown_timeout_seconds (G is clamped to B):
- t=0: `/readyz` answers 503 (`app.state.shutting_down`), everything else keeps being served:
  new connections are accepted and answered, so a load balancer that still sends traffic while
  it notices the 503 loses nothing.
- t=G: uvicorn's graceful shutdown: listeners close (new connections are refused), idle
  keep-alive connections close, in-flight requests (and the batches they are in) finish, for at
  most what remains of B minus `UNLOAD_RESERVE` of it.
- then the lifespan exit (app.lifespan): discovery and config polling stop first, loads in
  progress are cancelled, versions drain and unload, bounded by what remains of B.
- t=B at the latest: a watchdog thread ends the process (`os._exit`) if it is still running,
  logging what was given up. Exit status 128+signal either way (143 after SIGTERM).
- A second SIGTERM/SIGINT at any time ends the process at once (exit 128+signal).

uvicorn's own handler has no grace and no overall budget, and only SIGINT forces an exit, so
`GracefulServer` takes the signals over (in the main thread; a server run in another thread gets
no signals and shuts down when `should_exit` is set, with no grace). The signal handler only sets
fields and starts the watchdog: logging is not safe inside a signal handler (its locks may be
held by the interrupted code), so the log lines are written from `on_tick`, on the loop.
Under `uvicorn --factory app.main:create_app` none of this applies: use uvicorn's
`--timeout-graceful-shutdown` and a preStop sleep instead (README, "Production").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)

UNLOAD_RESERVE = 0.25  # share of the budget kept for the lifespan's drain and unload


@dataclass(frozen=True, slots=True)
class ShutdownPlan:
    """The two knobs, in seconds, as validated by Settings (grace >= 0, budget > 0)."""

    grace: float
    budget: float

    @property
    def effective_grace(self) -> float:
        return min(self.grace, self.budget)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server with the shutdown contract above.

    `on_signal(deadline)` is called from the signal handler with the `time.monotonic()` by which
    the process must be gone; it must only set flags (it runs between two bytecodes of whatever
    the main thread was doing).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        plan: ShutdownPlan,
        on_signal: Callable[[float], None],
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        super().__init__(config)
        self.plan = plan
        self._on_signal = on_signal
        self._exit = exit
        self.signalled_at: float | None = None
        self.deadline: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.signalled_at is not None:  # a second signal: exit now, whatever is running
            os.write(2, f"hotserve: second signal {sig}: exiting at once\n".encode())
            self._exit(128 + sig)
            return
        now = time.monotonic()
        self.signalled_at = now
        self.deadline = now + self.plan.budget
        self._captured_signals.append(sig)  # uvicorn re-raises it after a clean shutdown
        self._on_signal(self.deadline)
        threading.Thread(
            target=self._watchdog, args=(sig,), name="hotserve-shutdown-budget", daemon=True
        ).start()
        if self.plan.effective_grace <= 0:
            self._begin_drain()

    async def on_tick(self, counter: int) -> bool:
        started = self.signalled_at
        if started is not None and not self._announced:
            self._announced = True
            log.info(
                "shutdown: signal received; /readyz is 503, serving for %.1fs more (grace), "
                "then draining; the process exits within %.1fs",
                self.plan.effective_grace,
                self.plan.budget,
            )
        grace_over = started is not None and time.monotonic() - started >= self.plan.effective_grace
        if grace_over and not self.should_exit:
            self._begin_drain()
        return await super().on_tick(counter)

    def _begin_drain(self) -> None:
        """Stop accepting; in-flight requests get what the budget leaves after the reserve."""
        assert self.deadline is not None
        left = self.deadline - time.monotonic()
        self.config.timeout_graceful_shutdown = max(int(left * (1 - UNLOAD_RESERVE)), 1)
        self.should_exit = True

    def _watchdog(self, sig: int) -> None:
        assert self.deadline is not None
        time.sleep(max(self.deadline - time.monotonic(), 0.0))
        log.error(
            "shutdown: budget of %.1fs exhausted; exiting with work left undone", self.plan.budget
        )
        logging.shutdown()
        self._exit(128 + sig)


def remaining(deadline: float | None, default: float) -> float:
    """Seconds left before `deadline` (a `time.monotonic()` value), at most `default`; a small
    margin is kept so the process exits by itself before the watchdog fires."""
    if deadline is None:
        return default
    return max(min(default, deadline - time.monotonic() - 0.5), 0.0)
