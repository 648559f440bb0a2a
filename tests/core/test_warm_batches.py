"""A new version is warmed at every batch size its batcher will run, before it serves: the
sizes a policy makes (`batch_sizes`) and the load path that runs them (`VersionWork.load`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np

from app.core.batch_policy import batch_sizes
from app.core.batch_usage import HORIZON, BatchUsage
from app.core.batcher import Batcher, DirectRunner, Runner
from app.core.priority import LoadPriority
from app.core.servable import Servable
from app.core.types import BatchPolicy, ServableId
from app.core.versions import LoadOptions, VersionWork
from tests.fakes import SlowServable


def test_every_row_count_up_to_the_limit() -> None:
    assert batch_sizes(BatchPolicy(max_batch_size=8)) == tuple(range(1, 9))


def test_padded_batches_run_only_at_the_allowed_sizes() -> None:
    policy = BatchPolicy(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    assert batch_sizes(policy) == (2, 4, 8)


def test_split_batches_run_up_to_the_execution_limit() -> None:
    policy = BatchPolicy(
        max_batch_size=64, enable_large_batch_splitting=True, max_execution_batch_size=16
    )
    assert batch_sizes(policy) == tuple(range(1, 17))


def test_a_huge_limit_keeps_small_sizes_powers_of_two_and_the_limit() -> None:
    sizes = batch_sizes(BatchPolicy(max_batch_size=1000))
    assert sizes[:64] == tuple(range(1, 65))
    assert sizes[64:] == (128, 256, 512, 1000)


def test_the_batcher_tells_its_sizes() -> None:
    policy = BatchPolicy(max_batch_size=4, allowed_batch_sizes=(2, 4))
    batcher = Batcher(lambda s, i: {}, policy, anyio.CapacityLimiter(1))
    assert batcher.batch_sizes == (2, 4)


class WarmedServable(SlowServable):
    """Records what the load path asks of it, and from which thread at which niceness."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.warm_calls: list[tuple[tuple[int, ...], int, int]] = []
        self.while_idle: tuple[int, ...] = ()

    def warmup(self, iterations: int) -> int:
        return 1

    def warm_batch_sizes(self, sizes: Sequence[int], while_idle: Sequence[int] = ()) -> int:
        tid = threading.get_native_id()
        self.warm_calls.append((tuple(sizes), tid, os.getpriority(os.PRIO_PROCESS, tid)))
        self.while_idle = tuple(while_idle)
        for rows in sizes:
            self.run("serving_default", {"x": np.zeros(rows, np.float32)})
        return len(sizes)


class OneLoader:
    def __init__(self, servable: Servable) -> None:
        self.servable = servable

    def load(self, path: Path) -> Servable:
        return self.servable


def load_with(runner: Runner, servable: WarmedServable, priority: LoadPriority) -> None:
    work = VersionWork(
        loader=OneLoader(servable),
        runner_factory=lambda sid, s, path: runner,
        limiter=anyio.CapacityLimiter(1),
        options=LoadOptions(),
        release_memory=lambda run_steps: None,
        priority=priority,
    )

    async def main() -> None:
        await work.load(ServableId("m", 2), Path("/nowhere"), lambda signatures: None)

    anyio.run(main)


def test_the_load_warms_every_batch_size_on_the_load_thread() -> None:
    servable = WarmedServable()
    priority = LoadPriority(5)
    priority.call(lambda: None)  # the first load runs at normal priority; this is a later one
    policy = BatchPolicy(max_batch_size=6, allowed_batch_sizes=(2, 4, 6))
    load_with(Batcher(servable.run, policy, anyio.CapacityLimiter(1)), servable, priority)
    [(sizes, tid, nice)] = servable.warm_calls
    assert sizes == (2, 4, 6)
    me = threading.get_native_id()
    assert tid != me
    assert nice == min(os.getpriority(os.PRIO_PROCESS, me) + 5, 19)
    assert servable.calls == 3


def test_without_batching_nothing_more_is_warmed() -> None:
    servable = WarmedServable()
    load_with(DirectRunner(servable.run, anyio.CapacityLimiter(1)), servable, LoadPriority(5))
    assert servable.warm_calls == []


def test_warmup_off_warms_no_batch_size() -> None:
    servable = WarmedServable()
    work = VersionWork(
        loader=OneLoader(servable),
        runner_factory=lambda sid, s, path: Batcher(
            s.run, BatchPolicy(max_batch_size=4), anyio.CapacityLimiter(1)
        ),
        limiter=anyio.CapacityLimiter(1),
        options=LoadOptions(enable_warmup=False),
        release_memory=lambda run_steps: None,
        priority=LoadPriority(0),
    )

    async def main() -> None:
        await work.load(ServableId("m", 1), Path("/nowhere"), lambda signatures: None)

    anyio.run(main)
    assert servable.warm_calls == []


def test_usage_splits_the_sizes_at_the_largest_recent_batch() -> None:
    now = [1000.0]
    usage = BatchUsage(clock=lambda: now[0])
    sizes = tuple(range(1, 9))
    assert usage.warm_first(sizes) == (sizes, ())  # no batch yet: every size
    usage.record(3)
    usage.record(5)
    usage.record(2)
    assert usage.largest() == 5
    assert usage.warm_first(sizes) == ((1, 2, 3, 4, 5), (6, 7, 8))
    now[0] += HORIZON - 1.0
    usage.record(4)
    now[0] += 2.0  # 3 and 5 are older than the horizon now, 4 is not
    assert usage.warm_first(sizes) == ((1, 2, 3, 4), (5, 6, 7, 8))
    now[0] += HORIZON
    assert usage.warm_first(sizes) == (sizes, ())


def test_padded_usage_keeps_the_allowed_sizes() -> None:
    usage = BatchUsage()
    usage.record(4)
    assert usage.warm_first((2, 4, 8)) == ((2, 4), (8,))


def test_batchers_record_the_padded_row_counts_of_their_calls() -> None:
    usage = BatchUsage()
    policy = BatchPolicy(max_batch_size=8, allowed_batch_sizes=(4, 8))
    calls: list[int] = []

    def run(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    batcher = Batcher(run, policy, anyio.CapacityLimiter(1), usage=usage)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for rows in (1, 2, 3):
                tg.start_soon(batcher.submit, "serving_default", {"x": np.ones(rows, np.float32)})

    anyio.run(main)
    assert set(calls) <= {4, 8}  # padded to an allowed size
    assert usage.largest() == max(calls)


def test_a_new_version_of_a_busy_model_warms_up_to_the_largest_recent_batch() -> None:
    servable = WarmedServable()
    usage = BatchUsage()
    usage.record(3)  # the old version's batcher ran 3 rows just now
    policy = BatchPolicy(max_batch_size=6)
    batcher = Batcher(servable.run, policy, anyio.CapacityLimiter(1), usage=usage)
    load_with(batcher, servable, LoadPriority(0))
    [(sizes, _, _)] = servable.warm_calls
    assert sizes == (1, 2, 3)
    assert servable.while_idle == (4, 5, 6)
