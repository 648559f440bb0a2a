"""The micro-batcher (app.core.batcher) against numpy fake models: no TensorFlow here.

Composition of batches is controlled with a gate: a first "blocker" request holds the only
batch slot inside the model while the requests under test queue up behind it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import numpy as np
import pytest

from app.core.batcher import Batcher, DirectRunner
from app.core.types import BatchPolicy
from app.errors import (
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

pytestmark = pytest.mark.timeout(20)


class FakeModel:
    """y = 2x (+ more outputs); records every call; a call holding the blocker row (-1) waits
    for `gate`."""

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[tuple[str, dict[str, np.ndarray]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    @property
    def sizes(self) -> list[int]:
        return [next(iter(inputs.values())).shape[0] for _, inputs in self.calls]

    def __call__(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls.append((signature, {k: np.array(v, copy=True) for k, v in inputs.items()}))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if np.any(inputs["x"] == -1):
                assert self.gate.wait(5)
            if self.delay:
                time.sleep(self.delay)
            x = inputs["x"]
            if self.fail_on is not None and np.any(x == self.fail_on):
                raise InvalidArgument("model refused the batch")
            out = {"y": x * 2}
            if "z" in inputs:
                out["s"] = x.reshape(x.shape[0], -1).sum(axis=1) + inputs["z"][:, 0]
                out["zz"] = inputs["z"] * 3
            return out
        finally:
            with self._lock:
                self.active -= 1


class Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[str, int, int, str]] = []
        self.waits: list[float] = []
        self.depths: list[int] = []
        self.rejects = 0
        self.expiries = 0

    def batch_run(
        self, signature: str, rows: int, padded_rows: int, reason: str, seconds: float
    ) -> None:
        self.runs.append((signature, rows, padded_rows, reason))

    def queued(self, signature: str, seconds_waited: float) -> None:
        self.waits.append(seconds_waited)

    def queue_depth(self, rows: int) -> None:
        self.depths.append(rows)

    def rejected(self) -> None:
        self.rejects += 1

    def expired(self) -> None:
        self.expiries += 1


def policy(**kw: Any) -> BatchPolicy:
    kw.setdefault("num_batch_threads", 1)
    return BatchPolicy(**kw)


def make(model: FakeModel, **kw: Any) -> tuple[Batcher, Recorder]:
    rec = Recorder()
    return Batcher(model, policy(**kw), anyio.CapacityLimiter(8), rec), rec


def x(*rows: float, width: int = 0) -> dict[str, np.ndarray]:
    arr = np.array(rows, dtype=np.float32)
    return {"x": arr if not width else np.repeat(arr[:, None], width, axis=1)}


async def settle() -> None:
    """Let freshly created tasks reach their first await (they enqueue synchronously)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in 5 s"
        await asyncio.sleep(0.001)


async def block(batcher: Batcher, model: FakeModel) -> asyncio.Task[dict[str, np.ndarray]]:
    """Occupy the model with a 1-row blocker; returns once the model holds it."""
    model.gate.clear()
    blocker = asyncio.create_task(batcher.submit("serving_default", x(-1)))
    await until(lambda: bool(model.calls))
    return blocker


def spawn(
    batcher: Batcher, *reqs: dict[str, np.ndarray], sig: str = "serving_default"
) -> list[asyncio.Task[dict[str, np.ndarray]]]:
    return [asyncio.create_task(batcher.submit(sig, r)) for r in reqs]


async def test_outputs_identical_with_batching_on_and_off() -> None:
    rng = random.Random(7)
    reqs = []
    for _ in range(120):
        n = rng.randint(1, 5)
        reqs.append(
            {
                "x": np.arange(n * 3, dtype=np.float32).reshape(n, 3) + rng.random(),
                "z": np.full((n, 2), rng.randint(0, 9), dtype=np.int64),
            }
        )
    direct = DirectRunner(FakeModel(), anyio.CapacityLimiter(4))
    model = FakeModel(delay=0.002)
    batcher, _ = make(model, max_batch_size=16, num_batch_threads=2, batch_timeout_micros=500)
    expected = await asyncio.gather(*(direct.submit("serving_default", r) for r in reqs))
    got = await asyncio.gather(*(batcher.submit("serving_default", r) for r in reqs))
    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys() == {"y", "s", "zz"}
        for k in want:
            assert have[k].dtype == want[k].dtype
            np.testing.assert_array_equal(have[k], want[k])
    assert max(model.sizes) > 5  # coalesced
    assert max(model.sizes) <= 16
    assert batcher.in_flight == 0


async def test_coalesces_under_concurrency_and_respects_max_rows() -> None:
    model = FakeModel(delay=0.01)
    batcher, rec = make(model, max_batch_size=8)
    outs = await asyncio.gather(
        *(batcher.submit("serving_default", x(i, i + 1)) for i in range(30))
    )
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], [2 * i, 2 * i + 2])
    assert max(model.sizes) == 8
    assert all(size <= 8 for size in model.sizes)
    assert sum(model.sizes) == 60
    assert {r[3] for r in rec.runs} <= {"idle", "full"}
    assert "full" in {r[3] for r in rec.runs}


async def test_idle_request_runs_alone_at_once_despite_timeout() -> None:
    model = FakeModel()
    batcher, rec = make(
        model, max_batch_size=32, batch_timeout_micros=2_000_000, num_batch_threads=2
    )
    began = time.monotonic()
    for i in range(20):
        out = await batcher.submit("serving_default", x(i))
        np.testing.assert_array_equal(out["y"], [2 * i])
    assert time.monotonic() - began < 1.0  # never waited for the 2 s timeout
    assert model.sizes == [1] * 20
    assert {r[3] for r in rec.runs} == {"idle"}


async def test_timeout_flush_while_another_batch_runs() -> None:
    model = FakeModel()
    batcher, rec = make(model, max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=2)
    blocker = await block(batcher, model)
    began = time.monotonic()
    (waiting,) = spawn(batcher, x(3))
    out = await waiting  # the second slot is free: it runs after the timeout, not the blocker
    assert 0.04 <= time.monotonic() - began < 2
    np.testing.assert_array_equal(out["y"], [6])
    assert rec.runs[-1][3] == "timeout"
    assert not blocker.done()
    model.gate.set()
    await blocker


async def test_full_batch_runs_without_waiting_for_timeout() -> None:
    model = FakeModel()
    batcher, rec = make(
        model, max_batch_size=4, batch_timeout_micros=5_000_000, num_batch_threads=2
    )
    blocker = await block(batcher, model)
    tasks = spawn(batcher, x(1, 2), x(3, 4))
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert model.sizes[1:] == [4]
    assert rec.runs[-1][3] == "full"
    model.gate.set()
    await blocker


async def test_oversize_request_rejected_without_splitting() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=4)
    with pytest.raises(
        InvalidArgument, match=r"^Task size 5 is larger than maximum input batch size 4$"
    ):
        await batcher.submit("serving_default", x(1, 2, 3, 4, 5))
    assert model.calls == []


async def test_large_request_split_across_batches_and_reassembled() -> None:
    model = FakeModel()
    batcher, _ = make(
        model, max_batch_size=16, enable_large_batch_splitting=True, max_execution_batch_size=4
    )
    rows = [float(i) for i in range(10)]
    out = await batcher.submit("serving_default", x(*rows, width=2))
    np.testing.assert_array_equal(out["y"], x(*rows, width=2)["x"] * 2)
    assert model.sizes == [4, 4, 2]
    with pytest.raises(
        InvalidArgument, match="Task size 17 is larger than maximum input batch size 16"
    ):
        await batcher.submit("serving_default", x(*range(17)))


async def test_split_fills_the_room_of_the_open_batch() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=4, enable_large_batch_splitting=True)
    blocker = await block(batcher, model)
    a, b = spawn(batcher, x(1, 2, 3), x(4, 5, 6))
    await settle()
    model.gate.set()
    out_a, out_b, _ = await asyncio.gather(a, b, blocker)
    np.testing.assert_array_equal(out_a["y"], [2, 4, 6])
    np.testing.assert_array_equal(out_b["y"], [8, 10, 12])
    assert model.sizes == [1, 4, 2]


async def test_allowed_batch_sizes_padding_is_stripped() -> None:
    model = FakeModel()
    batcher, rec = make(model, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    out = await batcher.submit("serving_default", x(1, 2, 3, width=2))
    np.testing.assert_array_equal(out["y"], x(1, 2, 3, width=2)["x"] * 2)
    assert model.sizes == [4]
    np.testing.assert_array_equal(model.calls[0][1]["x"][3], [1, 1])  # a copy of a valid row
    assert rec.runs == [("serving_default", 3, 4, "idle")]


async def test_pad_variable_length_inputs_joins_different_widths() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=8, pad_variable_length_inputs=True)
    blocker = await block(batcher, model)
    narrow = {"x": np.arange(1, 7, dtype=np.float32).reshape(2, 3)}
    wide = {"x": np.arange(1, 6, dtype=np.float32).reshape(1, 5)}
    a, b = spawn(batcher, narrow, wide)
    await settle()
    model.gate.set()
    out_a, out_b, _ = await asyncio.gather(a, b, blocker)
    assert model.sizes == [1, 3]
    assert model.calls[1][1]["x"].shape == (3, 5)
    # TF pads at the end of each dimension with the request's first element.
    np.testing.assert_array_equal(out_a["y"], [[2, 4, 6, 2, 2], [8, 10, 12, 2, 2]])
    np.testing.assert_array_equal(out_b["y"], [[2, 4, 6, 8, 10]])


async def test_pad_variable_length_pads_strings() -> None:
    seen: list[np.ndarray] = []

    def run(signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs["s"])
        time.sleep(0.02)
        return {"n": np.array([[len(b) for b in row] for row in inputs["s"]])}

    batcher = Batcher(
        run, policy(max_batch_size=8, pad_variable_length_inputs=True), anyio.CapacityLimiter(2)
    )
    first = asyncio.create_task(batcher.submit("s", {"s": np.array([[b"a"]], dtype=object)}))
    await settle()
    reqs = [np.array([[b"bb", b"c"]], dtype=object), np.array([[b"ddd"]], dtype=object)]
    outs = await asyncio.gather(*(batcher.submit("s", {"s": r}) for r in reqs))
    await first
    assert seen[1].shape == (2, 2)
    np.testing.assert_array_equal(outs[0]["n"], [[2, 1]])
    np.testing.assert_array_equal(outs[1]["n"], [[3, 3]])


async def test_different_widths_never_share_without_padding() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=8)
    blocker = await block(batcher, model)
    tasks = spawn(batcher, x(1, 2, width=3), x(3, width=5), x(4, width=3))
    await settle()
    model.gate.set()
    outs = await asyncio.gather(*tasks, blocker)
    np.testing.assert_array_equal(outs[1]["y"], [[6] * 5])
    shapes = sorted(inputs["x"].shape for _, inputs in model.calls[1:])
    assert shapes == [(1, 5), (3, 3)]


async def test_different_signatures_never_share() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=8)
    blocker = await block(batcher, model)
    tasks = (
        spawn(batcher, x(1), x(2), sig="a")
        + spawn(batcher, x(3), sig="b")
        + spawn(batcher, x(4), sig="a")
    )
    await settle()
    model.gate.set()
    outs = await asyncio.gather(*tasks, blocker)
    assert [float(o["y"][0]) for o in outs[:4]] == [2, 4, 6, 8]
    batches = sorted((sig, tuple(inputs["x"].tolist())) for sig, inputs in model.calls[1:])
    assert batches == [("a", (1.0, 2.0, 4.0)), ("b", (3.0,))]


async def test_queue_full_is_unavailable_at_once() -> None:
    model = FakeModel()
    batcher, rec = make(model, max_batch_size=2, max_enqueued_batches=2)
    blocker = await block(batcher, model)
    queued = spawn(batcher, x(1, 2), x(3), x(4))  # 4 rows: two batches of max_batch_size
    await settle()
    began = time.monotonic()
    with pytest.raises(
        Unavailable, match=r"^The batch scheduling queue to which this task was submitted is full$"
    ):
        await batcher.submit("serving_default", x(5))
    assert time.monotonic() - began < 0.1
    assert rec.rejects == 1
    model.gate.set()
    await asyncio.gather(*queued, blocker)
    await batcher.submit("serving_default", x(5))  # room again


async def test_expired_requests_fail_and_never_reach_the_model() -> None:
    model = FakeModel()
    batcher, rec = make(model, max_batch_size=8)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit("serving_default", x(7), deadline=time.monotonic() - 1)
    blocker = await block(batcher, model)
    keep = spawn(batcher, x(1))
    began = time.monotonic()
    with pytest.raises(DeadlineExceeded):  # raised at its deadline, while the model is busy
        await batcher.submit("serving_default", x(7, 7), deadline=time.monotonic() + 0.05)
    assert time.monotonic() - began < 1
    model.gate.set()
    (out,) = await asyncio.gather(*keep)
    await blocker
    np.testing.assert_array_equal(out["y"], [2])
    assert all(7 not in inputs["x"] for _, inputs in model.calls)
    assert rec.expiries == 2
    assert rec.depths[-1] == 0


async def test_model_error_fails_only_its_batch() -> None:
    model = FakeModel(fail_on=13)
    batcher, _ = make(model, max_batch_size=2)
    blocker = await block(batcher, model)
    bad, neighbour, later = spawn(batcher, x(13), x(1), x(2))
    await settle()
    model.gate.set()
    results = await asyncio.gather(bad, neighbour, later, blocker, return_exceptions=True)
    assert isinstance(results[0], InvalidArgument)
    assert isinstance(results[1], InvalidArgument)  # shared the failing batch
    assert results[0] is not results[1]
    np.testing.assert_array_equal(results[2]["y"], [4])
    assert model.sizes == [1, 2, 1]


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ({"y": np.float32(1.0)}, "Batched output tensor has 0 dimensions"),
        ({"y": np.zeros(5)}, "0th dimension does not equal"),
    ],
)
async def test_bad_outputs_fail_the_batch_as_failed_precondition(
    outputs: dict[str, Any], match: str
) -> None:
    batcher = Batcher(
        lambda s, i: dict(outputs), policy(max_batch_size=4), anyio.CapacityLimiter(1)
    )
    # TF Serving's SplitOutputTensors: FAILED_PRECONDITION (HTTP 400), not a server fault.
    with pytest.raises(FailedPrecondition, match=match):
        await batcher.submit("serving_default", x(1, 2))


async def test_malformed_requests_rejected_before_queueing() -> None:
    model = FakeModel()
    batcher, _ = make(model)
    with pytest.raises(
        InvalidArgument,
        match=r"^Batching Run\(\) input tensors must have equal 0th-dimension size$",
    ):
        await batcher.submit("serving_default", {"x": np.zeros(2), "z": np.zeros((3, 1))})
    with pytest.raises(InvalidArgument, match="at least one dimension"):
        await batcher.submit("serving_default", {"x": np.float32(1.0)})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument, match="at least one input tensor"):
        await batcher.submit("serving_default", {})
    assert model.calls == []
    assert batcher.in_flight == 0


async def test_cancelled_waiting_request_does_not_break_others() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=8)
    blocker = await block(batcher, model)
    a, gone, b = spawn(batcher, x(1), x(99), x(2))
    await settle()
    gone.cancel()
    await settle()
    model.gate.set()
    out_a, out_b, _ = await asyncio.gather(a, b, blocker)
    assert gone.cancelled()
    np.testing.assert_array_equal(out_a["y"], [2])
    np.testing.assert_array_equal(out_b["y"], [4])
    assert all(99 not in inputs["x"] for _, inputs in model.calls)
    assert batcher.in_flight == 0


async def test_cancelled_runner_still_answers_its_batch() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=8)
    blocker = await block(batcher, model)  # the blocker's coroutine runs this batch
    others = spawn(batcher, x(1), x(2))
    await settle()
    blocker.cancel()  # natively, while the model runs its batch
    await settle()
    model.gate.set()
    outs = await asyncio.gather(*others)
    assert [float(o["y"][0]) for o in outs] == [2, 4]
    with pytest.raises(asyncio.CancelledError):
        await blocker


async def test_runner_cancelled_before_start_hands_batch_on() -> None:
    shared = anyio.CapacityLimiter(1)
    hog_model, model = FakeModel(), FakeModel()
    hog = Batcher(hog_model, policy(), shared)
    batcher = Batcher(model, policy(max_batch_size=8), shared)
    hog_model.gate.clear()
    hogging = asyncio.create_task(hog.submit("s", x(-1)))
    await until(lambda: bool(hog_model.calls))
    (alone,) = spawn(batcher, x(1))  # runs at once, alone: waits for the limiter
    await settle()
    lead, follower = spawn(batcher, x(2), x(3))  # queued behind it
    await settle()
    alone.cancel()  # its batch has nobody else: dropped; [lead, follower] forms, waits too
    await settle()
    lead.cancel()  # before any thread took the batch: the follower must run it
    await settle()
    hog_model.gate.set()
    out = await asyncio.wait_for(follower, 5)
    await hogging
    assert alone.cancelled() and lead.cancelled()
    np.testing.assert_array_equal(out["y"], [6])
    assert model.sizes == [2]  # one model call: the batch, run once, by the follower
    assert batcher.in_flight == 0


async def test_runner_cancelled_after_being_handed_a_batch() -> None:
    loop = asyncio.get_running_loop()
    victim: list[asyncio.Task[Any]] = []

    class CancelOnForm(Recorder):
        def queue_depth(self, rows: int) -> None:
            super().queue_depth(rows)
            if victim and rows == 0:  # the batch [a, b] was just formed and goes to a next
                loop.call_soon(victim.pop().cancel)

    model = FakeModel()
    batcher = Batcher(model, policy(max_batch_size=8), anyio.CapacityLimiter(2), CancelOnForm())
    blocker = await block(batcher, model)
    a, b = spawn(batcher, x(1), x(2))
    await settle()
    victim.append(a)
    model.gate.set()
    out_b = await asyncio.wait_for(b, 5)
    await blocker
    assert a.cancelled()
    np.testing.assert_array_equal(out_b["y"], [4])
    assert model.sizes == [1, 2]  # b ran the batch a had been given
    assert batcher.in_flight == 0


async def test_anyio_cancelled_runner_does_not_strand_its_batch() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=8)
    outs: list[dict[str, np.ndarray]] = []

    async def other(value: float) -> None:
        outs.append(await batcher.submit("serving_default", x(value)))

    model.gate.clear()
    async with anyio.create_task_group() as tg:
        lead = anyio.CancelScope()

        async def leader() -> None:
            with lead:
                await batcher.submit("serving_default", x(-1, 5))

        tg.start_soon(leader)
        await until(lambda: bool(model.calls))
        tg.start_soon(other, 1.0)
        tg.start_soon(other, 2.0)
        await settle()
        lead.cancel()
        await settle()
        model.gate.set()
    assert sorted(float(o["y"][0]) for o in outs) == [2, 4]
    assert batcher.in_flight == 0


async def test_request_expiring_in_the_queue_is_dropped_when_the_batch_forms() -> None:
    class SlowObserver(Recorder):
        def batch_run(
            self, signature: str, rows: int, padded_rows: int, reason: str, seconds: float
        ) -> None:
            super().batch_run(signature, rows, padded_rows, reason, seconds)
            time.sleep(0.06)  # blocks the loop: the deadline passes before its timer can fire

    model = FakeModel()
    rec = SlowObserver()
    batcher = Batcher(model, policy(max_batch_size=8), anyio.CapacityLimiter(2), rec)
    blocker = await block(batcher, model)
    late = asyncio.create_task(
        batcher.submit("serving_default", x(7), deadline=time.monotonic() + 0.03)
    )
    (keep,) = spawn(batcher, x(1))
    await settle()
    model.gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    np.testing.assert_array_equal((await keep)["y"], [2])
    await blocker
    assert model.sizes == [1, 1]
    assert rec.expiries == 1


async def test_num_batch_threads_bounds_concurrent_model_calls() -> None:
    model = FakeModel(delay=0.01)
    batcher, _ = make(model, max_batch_size=2, num_batch_threads=2)
    await asyncio.gather(*(batcher.submit("serving_default", x(i)) for i in range(40)))
    assert model.max_active == 2


async def test_close_drains_then_rejects() -> None:
    model = FakeModel(delay=0.02)
    batcher, rec = make(model, max_batch_size=2)
    tasks = spawn(batcher, *(x(i) for i in range(6)))
    await settle()
    await batcher.close(5)
    assert all(t.done() and not t.exception() for t in tasks)
    assert batcher.in_flight == 0
    with pytest.raises(Unavailable):
        await batcher.submit("serving_default", x(1))
    assert rec.rejects == 1


async def test_close_timeout_fails_queued_requests() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=2)
    blocker = await block(batcher, model)
    (queued,) = spawn(batcher, x(1))
    await settle()
    began = time.monotonic()
    await batcher.close(0.05)
    assert time.monotonic() - began < 1
    with pytest.raises(Unavailable):
        await queued
    model.gate.set()
    await blocker  # the running batch still completes


async def test_observer_sees_batches_waits_and_depth() -> None:
    model = FakeModel()
    batcher, rec = make(model, max_batch_size=4)
    blocker = await block(batcher, model)
    tasks = spawn(batcher, x(1, 2), x(3))
    await settle()
    assert rec.depths[-1] == 3
    model.gate.set()
    await asyncio.gather(*tasks, blocker)
    assert rec.runs == [("serving_default", 1, 1, "idle"), ("serving_default", 3, 3, "idle")]
    assert len(rec.waits) == 3
    assert rec.depths[-1] == 0


async def test_zero_row_request() -> None:
    batcher, _ = make(FakeModel(), max_batch_size=4)
    out = await batcher.submit("serving_default", {"x": np.zeros((0, 3), np.float32)})
    assert out["y"].shape == (0, 3)


async def test_padding_after_a_zero_row_request_copies_a_real_row() -> None:
    model = FakeModel()
    batcher, _ = make(model, max_batch_size=4, allowed_batch_sizes=(4,))
    blocker = await block(batcher, model)
    one, empty = spawn(batcher, x(5), {"x": np.zeros(0, np.float32)})
    await settle()
    model.gate.set()
    out_one, out_empty, _ = await asyncio.gather(one, empty, blocker)
    np.testing.assert_array_equal(out_one["y"], [10])
    assert out_empty["y"].shape == (0,)
    np.testing.assert_array_equal(model.calls[1][1]["x"], [5, 5, 5, 5])


async def test_split_request_with_variable_length_padding_is_joined() -> None:
    model = FakeModel()
    batcher, _ = make(
        model, max_batch_size=4, enable_large_batch_splitting=True, pad_variable_length_inputs=True
    )
    blocker = await block(batcher, model)
    wide = {"x": np.full((2, 4), 3, np.float32)}
    narrow = {"x": np.arange(1, 5, dtype=np.float32).reshape(4, 1)}
    a, b = spawn(batcher, wide, narrow)  # b: 2 rows beside a (width 4), 2 rows alone (width 1)
    await settle()
    model.gate.set()
    out_a, out_b, _ = await asyncio.gather(a, b, blocker)
    assert model.sizes == [1, 4, 2]
    np.testing.assert_array_equal(out_a["y"], np.full((2, 4), 6))
    np.testing.assert_array_equal(
        out_b["y"], [[2, 2, 2, 2], [4, 2, 2, 2], [6, 6, 6, 6], [8, 6, 6, 6]]
    )


async def test_invalid_policy_is_config_error() -> None:
    with pytest.raises(ConfigError, match="Last entry in allowed_batch_sizes must match"):
        Batcher(
            FakeModel(),
            policy(max_batch_size=8, allowed_batch_sizes=(2, 4)),
            anyio.CapacityLimiter(1),
        )


async def test_direct_runner_deadline_and_close() -> None:
    model = FakeModel()
    runner = DirectRunner(model, anyio.CapacityLimiter(2))
    out = await runner.submit("serving_default", x(1, 2))
    np.testing.assert_array_equal(out["y"], [2, 4])
    with pytest.raises(DeadlineExceeded):
        await runner.submit("serving_default", x(1), deadline=time.monotonic() - 1)
    await runner.close(1)
    with pytest.raises(Unavailable):
        await runner.submit("serving_default", x(1))
    assert len(model.calls) == 1
