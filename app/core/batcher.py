"""Runners: how a loaded version's model calls are scheduled (issue 4).

`Batcher` coalesces concurrent requests for one model version into batched model calls;
`DirectRunner` is the batching-off twin. Both satisfy `Runner`, which is all the registry and the
routes see. Every version owns its own runner, so a batch never mixes versions.

Threading: `submit` and `close` are called on the event loop thread; the batcher needs asyncio
(it uses asyncio futures and loop callbacks directly: this path runs for every request).
`run_fn` is only ever called in a worker thread through the inference limiter, never on the loop.
Observer hooks are called on the loop thread.

How the batcher schedules (no background task; "leader" scheduling):
- `submit` checks the request, appends it to the queue of its batch key (signature + non-batch
  shapes and dtypes, see `batching_shapes`) and dispatches (`batching_queue.Scheduler`): while
  fewer than `num_batch_threads` batches run, a queue is flushed when it holds a full batch
  ("full"), when nothing is running ("idle": an idle model never makes a request wait), or when
  its oldest request has waited `batch_timeout_micros` while another batch ran ("timeout").
  A request that finds every queue empty and a slot that would run it at once skips the queues
  (the idle fast path: little more bookkeeping than `DirectRunner`).
- A formed batch is handed to a coroutine waiting in it (its runner), which runs it in the
  limiter: the worker thread merges, calls the model, checks and splits the outputs; the runner
  then answers every request of the batch, frees the slot and hands the next due batch to a
  coroutine waiting in it. A runner returns as soon as its own request is answered.
- Cancellation never strands a batch: if its runner is cancelled while the thread runs, the
  thread posts the outcome to the loop itself; if before any thread took it, it goes to another
  of its requests (or is dropped when nobody in it waits). `Batch` makes both exactly-once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import anyio
import anyio.to_thread
import numpy as np

from app.core import pacing
from app.core.batch_policy import batch_sizes, validate_batch_policy
from app.core.batch_usage import BatchUsage
from app.core.batching_queue import Scheduler
from app.core.batching_shapes import batch_key, merge_inputs, request_rows, split_outputs
from app.core.batching_types import (
    EXPIRED,
    NEW,
    QUEUED,
    Batch,
    BatchObserver,
    NullObserver,
    Task,
)
from app.core.types import BatchPolicy
from app.errors import DeadlineExceeded, InvalidArgument, Unavailable

__all__ = [
    "BatchObserver",
    "Batcher",
    "DirectRunner",
    "NullObserver",
    "RunFn",
    "Runner",
]

logger = logging.getLogger(__name__)

RunFn = Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
CLOSED = "The batch scheduler of this servable is closed (the version is being unloaded)"


class Runner(Protocol):
    async def submit(
        self, signature: str, inputs: dict[str, np.ndarray], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run one request; `deadline` is an absolute time.monotonic() (None: no deadline).
        Returns every output alias -> array, exactly as `run_fn` would for this request alone."""
        ...

    async def close(self, timeout: float) -> None:
        """Stop taking work, then wait (at most `timeout` s) for accepted work to finish.
        Later submits raise Unavailable."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered."""
        ...

    @property
    def enforces_deadlines(self) -> bool:
        """True when a queued request fails with DeadlineExceeded at its deadline by itself,
        so callers need no timer of their own (a running model call always finishes)."""
        ...


class _Drain:
    """In-flight accounting and the bounded wait of `close`, shared by both runners."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._closed = False
        self._drained: anyio.Event | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _busy(self) -> bool:
        return self._in_flight > 0

    def _check_drained(self) -> None:
        if self._drained is not None and not self._busy():
            self._drained.set()

    async def _close_and_wait(self, timeout: float) -> bool:
        """Refuse new work, then wait; False when `timeout` ran out first."""
        self._closed = True
        if not self._busy():
            return True
        self._drained = anyio.Event()
        with anyio.move_on_after(timeout):
            await self._drained.wait()
        return not self._busy()


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(EXPIRED)


class DirectRunner(_Drain):
    """Batching off: every request is its own `run_fn` call in the inference limiter.

    Deadlines are checked before the call only: a request waiting for a limiter token is not
    woken at its deadline (enforces_deadlines is False; the caller bounds the wait)."""

    enforces_deadlines = False

    def __init__(self, run_fn: RunFn, limiter: anyio.CapacityLimiter) -> None:
        super().__init__()
        self._run_fn = run_fn
        self._limiter = limiter

    async def submit(
        self, signature: str, inputs: dict[str, np.ndarray], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        if self._closed:
            raise Unavailable(CLOSED)
        _check_deadline(deadline)
        self._in_flight += 1
        try:
            return await anyio.to_thread.run_sync(
                self._call, signature, inputs, deadline, limiter=self._limiter
            )
        finally:
            self._in_flight -= 1
            self._check_drained()

    def _call(
        self, signature: str, inputs: dict[str, np.ndarray], deadline: float | None
    ) -> dict[str, np.ndarray]:
        _check_deadline(deadline)  # again: the limiter may have kept the request waiting
        try:
            return self._run_fn(signature, inputs)
        finally:
            pacing.PIGGYBACK.after_call()  # a load's unit, if one waits (app.core.pacing)

    async def close(self, timeout: float) -> None:
        if not await self._close_and_wait(timeout):
            logger.warning("closing with %d direct model calls still running", self._in_flight)


class Batcher(_Drain):
    """Coalesces concurrent `submit`s of one model version into batched `run_fn` calls.

    Guarantees: a request gets exactly its rows of the batch's outputs (padding removed);
    requests share a batch only with the same signature and compatible shapes; a malformed or
    oversized request (InvalidArgument), one past the queue bound (Unavailable) or past its
    deadline (DeadlineExceeded) fails alone, before it costs model time; a model error fails
    only the batch that hit it; at most `num_batch_threads` batches run at once.
    Raises ConfigError for a policy TF Serving would refuse.
    """

    enforces_deadlines = True  # a timer per queued request (Scheduler), see Runner

    def __init__(
        self,
        run_fn: RunFn,
        policy: BatchPolicy,
        limiter: anyio.CapacityLimiter,
        observer: BatchObserver | None = None,
        usage: BatchUsage | None = None,
    ) -> None:
        validate_batch_policy(policy)
        super().__init__()
        self._run_fn = run_fn
        self._limiter = limiter
        self._observer: BatchObserver = observer or NullObserver()
        self._sched = Scheduler(policy, self._observer)
        self._sched.on_complete = self._check_drained
        self._max_task = policy.max_batch_size
        self._pad_variable = policy.pad_variable_length_inputs
        # The row counts of this batcher's model calls: a new version is warmed with each.
        self.batch_sizes = batch_sizes(policy)
        # The row counts of the model's recent calls (shared by its versions' batchers): which
        # of those sizes a load under traffic warms first (app.core.batch_usage).
        self.usage = usage if usage is not None else BatchUsage()
        self._queue_limit = policy.max_enqueued_batches * policy.max_batch_size

    @property
    def max_batch_size(self) -> int:
        """Rows per batch (the policy's): what a share of "batch slots" is counted against."""
        return self._max_task

    async def submit(
        self, signature: str, inputs: dict[str, np.ndarray], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        rows = self._admit(inputs, deadline)
        loop = self._sched.loop = asyncio.get_running_loop()
        if self._sched.can_run_alone(rows):
            return await self._run_alone(signature, inputs, rows)
        key = batch_key(signature, inputs, self._pad_variable)
        task = self._sched.enqueue(signature, key, inputs, rows, deadline=deadline, loop=loop)
        self._in_flight += 1
        try:
            self._sched.dispatch()
            await self._serve(task, loop)
        finally:
            self._in_flight -= 1
            self._check_drained()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    async def _run_alone(
        self, signature: str, inputs: dict[str, np.ndarray], rows: int
    ) -> dict[str, np.ndarray]:
        """An idle model runs the request at once, call for call like DirectRunner (no idle
        tax: measured ~10% of a small model's request with the batch machinery). It holds a
        slot meanwhile, so arrivals queue and form the next batch when it frees."""
        sched = self._sched
        sched.running += 1
        self._in_flight += 1
        self._observer.queued(signature, 0.0)
        seconds = 0.0
        try:
            outputs, seconds = await anyio.to_thread.run_sync(
                self._call_alone, signature, inputs, rows, limiter=self._limiter
            )
            return outputs
        finally:
            sched.running -= 1
            self._observer.batch_run(signature, rows, rows, "idle", seconds)
            self._in_flight -= 1
            sched.dispatch()
            self._check_drained()

    def _call_alone(
        self, signature: str, inputs: dict[str, np.ndarray], rows: int
    ) -> tuple[dict[str, np.ndarray], float]:
        began = time.perf_counter()
        outputs = self._run_fn(signature, inputs)
        seconds = time.perf_counter() - began
        self.usage.record(rows)
        split_outputs(outputs, [rows], rows)  # the same output checks as any batch
        pacing.PIGGYBACK.after_call()  # a load's unit, if one waits (app.core.pacing)
        return outputs, seconds

    async def close(self, timeout: float) -> None:
        if await self._close_and_wait(timeout):
            return
        logger.warning(
            "batcher closing with %d requests unanswered after %.1f s; failing %d queued rows",
            self._in_flight,
            timeout,
            self._sched.queued_rows,
        )
        self._sched.fail_queued(Unavailable(CLOSED))

    def _busy(self) -> bool:
        return self._in_flight > 0 or self._sched.running > 0

    def _admit(self, inputs: Mapping[str, np.ndarray], deadline: float | None) -> int:
        """Refuse a request before it is queued: closed, malformed, oversized, late, no room."""
        if self._closed:
            self._observer.rejected()
            raise Unavailable(CLOSED)
        rows = request_rows(inputs)
        if rows > self._max_task:
            raise InvalidArgument(
                f"Task size {rows} is larger than maximum input batch size {self._max_task}"
            )
        if deadline is not None and time.monotonic() >= deadline:
            self._observer.expired()
            raise DeadlineExceeded(EXPIRED)
        if self._sched.queued_rows + rows > self._queue_limit:
            self._observer.rejected()
            raise Unavailable(QUEUE_FULL)
        return rows

    async def _serve(self, task: Task, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the queued task's answer, running whatever batches are handed to this
        coroutine meanwhile."""
        batch: Batch | None = None
        timer = None
        if task.deadline is not None:
            timer = loop.call_later(task.deadline - time.monotonic(), self._sched.expire, task)
        try:
            while True:
                if batch is None:
                    assert task.waiter is not None
                    batch = await task.waiter
                    if batch is None:
                        return
                    task.waiter = None  # busy: not eligible to run another batch meanwhile
                await self._lead(batch)
                if task.state != QUEUED:
                    return
                batch = None
                task.waiter = loop.create_future()
                self._sched.dispatch()
        except BaseException:
            self._sched.abandon(task)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _lead(self, batch: Batch) -> None:
        """Run `batch` in the limiter, then complete it here with what the thread left."""
        try:
            # No shield of our own: run_sync already shields the wait for the thread from anyio
            # cancellation (the limiter token stays held while the model runs), and whatever
            # cancellation gets through (before the thread starts, or asyncio's) is handled below.
            await anyio.to_thread.run_sync(self._execute, batch, limiter=self._limiter)
        finally:
            # Normally the outcome is waiting. Cancelled instead: a running thread will post
            # it; a batch no thread started needs another runner.
            outcome = batch.detach()
            if outcome is not None:
                self._sched.complete(batch, *outcome)
            elif batch.state == NEW:
                self._sched.orphans.append(batch)

    def _execute(self, batch: Batch) -> None:
        """Worker thread: merge, call the model, check and split."""
        if not batch.begin():
            return  # another thread has it, or it was dropped
        answers: list[dict[str, np.ndarray]] | None = None
        error: BaseException | None = None
        seconds = 0.0
        pieces = batch.pieces
        try:
            if len(pieces) == 1 and batch.padded == pieces[0][0].rows == batch.rows:
                inputs = pieces[0][0].inputs  # one whole request, nothing to merge
                sizes = [batch.rows]
            else:
                parts = [(task.inputs, start, end) for task, start, end in pieces]
                inputs = merge_inputs(parts, batch.padded, self._pad_variable)
                sizes = [end - start for _, start, end in pieces]
            began = time.perf_counter()
            outputs = self._run_fn(batch.signature, inputs)
            seconds = time.perf_counter() - began
            self.usage.record(batch.padded)
            answers = split_outputs(outputs, sizes, batch.padded)
        except BaseException as exc:  # delivered to the batch's requests, never lost
            error = exc
        # A load's unit, if one waits (app.core.pacing.Piggyback): here, the batch's answers
        # wait for it, one short unit at a time, rather than for a load thread the kernel lets run.
        pacing.PIGGYBACK.after_call()
        if not batch.end((answers, error, seconds)):
            return
        loop = self._sched.loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._sched.complete, batch, answers, error, seconds)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            logger.warning("event loop closed before a batch of %d rows completed", batch.rows)
