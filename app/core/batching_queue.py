"""The loop-side state of one `Batcher`: queues, batch formation, slots and hand-off.

Everything here runs on the event loop thread and never awaits; `app.core.batcher` owns the
coroutines and threads. A request is a `Task` in the FIFO `Queue` of its batch key. `dispatch()`
forms batches while a slot (`num_batch_threads`) is free and a queue is due, and hands each to a
coroutine waiting in it (by resolving that task's `waiter` with the batch); a batch nobody can
run yet is an orphan until one of its requests' coroutines is free again.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Hashable, Mapping

import numpy as np

from app.core.batching_shapes import assemble_parts, padded_size
from app.core.batching_types import (
    CANCELLED,
    DONE,
    DROPPED,
    EXPIRED,
    QUEUED,
    Batch,
    BatchObserver,
    Queue,
    Task,
)
from app.core.types import BatchPolicy
from app.errors import DeadlineExceeded, InvalidArgument


def execution_limit(policy: BatchPolicy) -> int:
    """Largest batch actually run (max_execution_batch_size only applies with splitting)."""
    if policy.enable_large_batch_splitting and policy.max_execution_batch_size:
        return policy.max_execution_batch_size
    return policy.max_batch_size


def fresh(error: BaseException) -> BaseException:
    """A copy of a batch's error for one more request (raising one instance from many tasks
    would stack all their tracebacks onto it)."""
    try:
        return copy.copy(error)
    except Exception:
        return error


class Scheduler:
    """Queues and slots of one batcher. Loop thread only; every method is synchronous."""

    def __init__(self, policy: BatchPolicy, observer: BatchObserver) -> None:
        self.observer = observer
        self.max_rows = execution_limit(policy)
        self.split = policy.enable_large_batch_splitting
        self.pad_variable = policy.pad_variable_length_inputs
        self.allowed = policy.allowed_batch_sizes
        self.timeout = policy.batch_timeout_micros / 1e6
        self.threads = policy.num_batch_threads
        self.queues: dict[Hashable, Queue] = {}
        self.queued_rows = 0
        self.running = 0  # batches handed to a runner (or orphaned) and not yet completed
        self.orphans: list[Batch] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_complete: Callable[[], None] = _nothing  # called after every completed batch
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def enqueue(
        self,
        signature: str,
        key: Hashable,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        *,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> Task:
        self.loop = loop
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = Queue(signature)
        task = Task(inputs, rows, deadline, queue, loop.create_future())
        queue.tasks.append(task)
        queue.rows += rows
        self.queued_rows += rows
        self.observer.queue_depth(self.queued_rows)
        return task

    def can_run_alone(self, rows: int) -> bool:
        """The idle fast path: nothing waits, a slot would run this request at once anyway, and
        it needs no padding, so it may skip the queues and run exactly like an unbatched call."""
        if self.queues or self.orphans or rows > self.max_rows:
            return False
        if self.running >= self.threads or (self.running and self.timeout > 0):
            return False
        return padded_size(rows, self.allowed) == rows

    def dispatch(self) -> None:
        """Form and hand out every batch that is due while a slot is free."""
        if self.orphans:
            self._adopt_orphans()
        while self.queues and self.running < self.threads:
            picked = self._pick()
            if picked is None:
                return
            batch = self._form(*picked)
            if batch is None:
                continue
            self.running += 1
            waiter = _idle_waiter(batch)
            if waiter is None:
                self.orphans.append(batch)
            else:
                waiter.set_result(batch)

    def _adopt_orphans(self) -> None:
        for batch in list(self.orphans):
            waiter = _idle_waiter(batch)
            if waiter is not None:
                self.orphans.remove(batch)
                waiter.set_result(batch)
            elif not any(task.state == QUEUED for task, _, _ in batch.pieces):
                # Nobody in it waits any more: drop it unless a stale thread already ran it.
                self.orphans.remove(batch)
                outcome = batch.detach(drop=True)
                if outcome is not None:
                    self.complete(batch, *outcome)
                elif batch.state == DROPPED:
                    self.running -= 1

    def _pick(self) -> tuple[Queue, str] | None:
        """The due queue with the oldest head and why it is due; arms the timeout timer."""
        best: tuple[Queue, str] | None = None
        best_at = float("inf")
        wake_at: float | None = None
        empty: list[Hashable] = []
        for key, queue in self.queues.items():
            tasks = queue.tasks
            while tasks and tasks[0].state != QUEUED:
                tasks.popleft()
            if not tasks:
                empty.append(key)
                continue
            head_at = tasks[0].enqueued
            if queue.rows >= self.max_rows:
                reason = "full"
            elif self.running == 0:
                reason = "idle"  # nothing to wait for: never make a request wait on idle
            elif self.timeout > 0 and head_at + self.timeout > time.monotonic():
                due = head_at + self.timeout
                wake_at = due if wake_at is None else min(wake_at, due)
                continue
            else:
                reason = "timeout"
            if head_at < best_at:
                best, best_at = (queue, reason), head_at
        for key in empty:
            del self.queues[key]
        if best is None and wake_at is not None:
            self._arm_timer(wake_at)
        return best

    def _arm_timer(self, at: float) -> None:
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        assert self.loop is not None
        self._timer_at = at
        self._timer = self.loop.call_later(at - time.monotonic(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.dispatch()

    def _form(self, queue: Queue, reason: str) -> Batch | None:
        """Take up to `max_rows` rows from the queue head (FIFO), dropping expired requests;
        with splitting, the request that does not fit contributes the rows that do."""
        now = time.monotonic()
        tasks = queue.tasks
        pieces: list[tuple[Task, int, int]] = []
        rows = 0
        while tasks:
            task = tasks[0]
            if task.state != QUEUED:
                tasks.popleft()
                continue
            if task.deadline is not None and task.deadline <= now:
                self.observer.expired()
                self.fail(task, DeadlineExceeded(EXPIRED))
                continue
            left = task.rows - task.offset
            take = min(left, self.max_rows - rows)
            if take < left and (not self.split or take == 0):
                break
            if not task.started:
                task.started = True
                self.observer.queued(queue.signature, now - task.enqueued)
            pieces.append((task, task.offset, task.offset + take))
            task.offset += take
            rows += take
            if take < left:
                break
            tasks.popleft()
        queue.rows -= rows
        self.queued_rows -= rows
        self.observer.queue_depth(self.queued_rows)
        if not pieces:
            return None
        return Batch(queue.signature, pieces, rows, padded_size(rows, self.allowed), reason)

    def complete(
        self,
        batch: Batch,
        answers: list[dict[str, np.ndarray]] | None,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        """A batch finished (answers, or the error that failed it): answer its requests, free
        its slot, dispatch the next."""
        self.running -= 1
        self.observer.batch_run(batch.signature, batch.rows, batch.padded, batch.reason, seconds)
        for i, (task, start, end) in enumerate(batch.pieces):
            if task.state != QUEUED:
                continue
            if answers is None:
                assert error is not None
                self.fail(task, error if i == 0 else fresh(error))
            elif start == 0 and end == task.rows:
                task.outputs = answers[i]
                _finish(task)
            else:
                self._deliver_part(task, start, end, answers[i])
        self.dispatch()
        self.on_complete()

    def _deliver_part(
        self, task: Task, start: int, end: int, answer: dict[str, np.ndarray]
    ) -> None:
        """One part of a split request is answered; join the parts once all are."""
        if task.parts is None:
            task.parts = []
        task.parts.append((start, answer))
        task.delivered += end - start
        if task.delivered < task.rows:
            return
        try:
            task.outputs = assemble_parts(task.parts, self.pad_variable)
        except ValueError as exc:  # parts whose outputs differ in rank or non-batch shape
            # TF Serving joins split parts with tensor::Concat and returns its status as is:
            # INVALID_ARGUMENT for tensors that do not concatenate (HTTP 400).
            message = f"Could not join the outputs of a split request: {exc}"
            self.fail(task, InvalidArgument(message))
            return
        task.parts = None
        _finish(task)

    def withdraw(self, task: Task) -> None:
        """Take the task's untaken rows out of the queue accounting."""
        left = task.rows - task.offset
        if left:
            task.queue.rows -= left
            self.queued_rows -= left
            task.offset = task.rows

    def fail(self, task: Task, error: BaseException) -> None:
        self.withdraw(task)
        task.error = error
        _finish(task)

    def expire(self, task: Task) -> None:
        """Deadline timer: fail a request still wholly queued (a started one finishes)."""
        if task.state == QUEUED and not task.started:
            self.observer.expired()
            self.fail(task, DeadlineExceeded(EXPIRED))
            self.observer.queue_depth(self.queued_rows)

    def abandon(self, task: Task) -> None:
        """The task's coroutine leaves early (cancelled): drop its rows, pass on its batch."""
        if task.state == QUEUED:
            task.state = CANCELLED
            self.withdraw(task)
        waiter = task.waiter
        if waiter is not None and waiter.done() and not waiter.cancelled():
            handed = waiter.result()
            if handed is not None:  # it was chosen to run a batch it never started
                self.orphans.append(handed)
        self.dispatch()

    def fail_queued(self, error: BaseException) -> None:
        """Fail every request that is still queued (close timed out)."""
        for queue in self.queues.values():
            for task in queue.tasks:
                if task.state == QUEUED:
                    self.fail(task, fresh(error))
        self.queues.clear()
        self.dispatch()  # drops orphaned batches nobody waits for any more


def _nothing() -> None:
    pass


def _idle_waiter(batch: Batch) -> asyncio.Future[Batch | None] | None:
    """The waiter of a live request in the batch whose coroutine is free to run it."""
    for task, _, _ in batch.pieces:
        waiter = task.waiter
        if task.state == QUEUED and waiter is not None and not waiter.done():
            return waiter
    return None


def _finish(task: Task) -> None:
    task.state = DONE
    waiter = task.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
