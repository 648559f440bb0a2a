"""Restore a SavedModel's variables in small units, paced by app.core.pacing.

TF's restore (`Saver.restore`: one RestoreV2 op, then one assign per variable) reads every
variable whole in one uninterruptible op: hundreds of ms of CPU for a 1 GiB variable, which the
kernel lets the (niced) loading thread hold in ~5 ms stretches while serving waits for the
core. Here the same bytes go into the same variables in units of at most `CHUNK_BYTES`
(`BUSY_CHUNK_BYTES` while requests are in flight): each
unit reads a piece of the checkpoint (app.runtime.checkpoint, not RestoreV2: asked for a slice
of a tensor stored whole, RestoreV2 reads the whole tensor each time), extends the tensor's
CRC32C and writes the piece into the variable with a strided-slice assign; app.core.pacing's
`pace()` runs between units, so the load's pacer can give the core back to serving. While
requests are in flight the serving threads run the units instead, each right after a model
call (`pacing.run_steps`, app.core.pacing.Piggyback); a unit larger than BUSY_CHUNK_BYTES (one
wide row) stays on the loading thread, paced. The data files are opened, and read ahead by the
kernel, on the loading thread first, so a serving thread's read finds the page cache.

Which graphs: see app.runtime.restore_plan (TF1 savers and TF2 traced restore functions with
every entry stored whole, numeric, of the variable's dtype and shape). Anything else (V1
checkpoints, partitioned or string variables, a missing or mismatching entry, an index this
reader does not handle) restores exactly as TF does, in one go (`fallback`), and says why at
debug: its errors are then TF's own.

A variable is first given an uninitialized buffer (`Empty(init=False)` assigned: TF forwards
that buffer, nothing is touched), then filled along dim 0, rows [a, b) per unit; a row larger
than the unit size is a unit alone; a rank-0 or small variable is one unit. Checksums are
verified per tensor after its last piece (a failed load is discarded whole); a mismatch, a
short or missing data file raise checkpoint.DataLoss (carrying RestoreV2's code for it). Every
unit runs a callable made with RunOptions inter_op_thread_pool=-1 (as InlineRuns): in the
thread running the unit, never TF's shared pool; a callable also skips session.run's
per-call fetch/feed handling in Python. What cannot be cut: the session's first run (in it TF
builds its execution state from the whole graph and runs its graph optimizer: 10-20 ms for the
demo MLP, ~110 ms for a graph holding 48 MiB of constants; TF's own restore pays it too) and each
further bank's executor (see _Bank). Measurements: app.runtime.checkpoint's docstring.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from app.core import pacing
from app.runtime import checkpoint
from app.runtime.restore_plan import Target, Unsupported, plan

logger = logging.getLogger(__name__)

# Bytes per unit. Measured here (scripts/bench_swap/restore.py, 64 MiB float32 variable,
# busy shared machine): 128 KiB units took 0.11 ms median, 0.14 ms p99 (read + CRC32C + one
# callable run); 256 KiB 0.21 / 0.26 ms; the whole restore cost about the same CPU either way
# (1.7x TF's one op). From 512 KiB TF's assign splits the copy over its intra-op pool (thread
# CPU fell below wall), which is serving's pool.
CHUNK_BYTES = 128 * 1024
# Bytes per unit while serving threads run the units (app.core.pacing.Piggyback): each delays
# one batch by its length, so shorter is better for the tail until the per-unit cost dominates.
# bench_swap, 1 GiB, saturated core, share 0.05: 128 KiB units cost ~0.4 ms of CPU each under
# load, and p99 in the swap window was 1.19-1.26x steady (2 swaps); 32 KiB units ~0.11-0.14 ms,
# 1.10-1.11x pooled per run (11 swaps, three runs). Idle, units stay 128 KiB: a restore at full
# speed then pays the fixed cost of a unit (a callable run, Python) a quarter as often.
BUSY_CHUNK_BYTES = 32 * 1024
# Variables per bank (see _Bank): one executor each; every unit walks the bank's ops (about
# 8 per variable, all but one variable's skipped as dead).
BANK = 64


@dataclass(slots=True)
class RestoreInfo:
    """How a load restored its variables: `how` is "chunked", "tf" (TF's one-op restore;
    `reason` says why) or "none" (no variables). Times in seconds (wall, of the thread that ran
    the unit: the loading thread or a serving thread)."""

    how: str
    reason: str = ""
    tensors: int = 0
    bytes: int = 0
    units: int = 0
    longest_unit: float = 0.0
    unit_times: list[float] = field(default_factory=list, repr=False)


class _Bank:
    """One executor's worth of targets: ops that allocate every target's buffer (when fed
    `allocate` True) or write rows [begin, end) of the target numbered `index` from a flat
    value of its dtype, and nothing else.

    Why one set of ops for many variables: every distinct set of fetched ops costs the session
    a new executor on its first run, built in one piece with TF's graph optimizer over the
    whole graph (measured: 2-5 ms for the demo MLP, 30-100 ms for a graph holding 48 MiB of
    constants), so a per-variable op set would add that many long pieces. Here each target's
    ops take their inputs through `Switch` on `index == i` (or `allocate`): the executor
    skips the ops of the targets not picked (dead inputs), and every unit runs the same
    executor. Build with the graph as default, before it is finalized.
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        v1 = tf.compat.v1
        raw = tf.raw_ops
        self.targets = list(targets)
        self.index = v1.placeholder(tf.int32, [])
        self.allocate = v1.placeholder(tf.bool, [])
        self.begin = v1.placeholder(tf.int64, [1])
        self.end = v1.placeholder(tf.int64, [1])
        dtypes = sorted({t.dtype for t in targets}, key=lambda d: d.as_datatype_enum)
        self.values = {d: v1.placeholder(d, [None]) for d in dtypes}
        self.nothing = {d: np.empty(0, d.as_numpy_dtype) for d in dtypes}
        self.fetches: list[tf.Operation] = []
        strides = tf.constant([1], tf.int64)
        for i, target in enumerate(targets):
            picked = raw.Switch(data=self.values[target.dtype], pred=tf.equal(self.index, i))[1]
            if not target.shape:
                self.fetches.append(_assign(target, tf.reshape(picked, [])))
                pacing.pace()
                continue
            shape = tf.constant(list(target.shape), tf.int32)
            empty = raw.Empty(
                shape=raw.Switch(data=shape, pred=self.allocate)[1], dtype=target.dtype, init=False
            )
            self.fetches.append(_assign(target, empty))
            rows = tf.reshape(picked, [-1, *target.shape[1:]])
            if target.resource:
                put = raw.ResourceStridedSliceAssign(
                    ref=target.var, begin=self.begin, end=self.end, strides=strides, value=rows
                )
            else:
                put = raw.StridedSliceAssign(
                    ref=target.var, begin=self.begin, end=self.end, strides=strides, value=rows
                ).op
            self.fetches.append(put)
            pacing.pace()  # building ops is Python work too: ~10 per variable

    def callable(self, session: Any) -> Callable[..., Any]:
        """The bank's one callable (one executor), run in the calling thread (RunOptions
        inter_op_thread_pool=-1, as InlineRuns), taking `args()`."""
        feeds = [self.index, self.allocate, self.begin, self.end, *self.values.values()]
        options = config_pb2.CallableOptions(
            feed=[t.name for t in feeds],
            target=[op.name for op in self.fetches],
            run_options=config_pb2.RunOptions(inter_op_thread_pool=-1),
        )
        fn: Callable[..., Any] = session._make_callable_from_options(options)  # as serving
        return fn

    def args(self, index: int, value: np.ndarray | None, first: int, last: int) -> list[Any]:
        """The callable's arguments writing rows [first, last) of target `index` (-1 with
        `value` None: allocate every target)."""
        values = dict(self.nothing)
        if value is not None:
            values[self.targets[index].dtype] = value
        flags = [np.int32(index), np.bool_(value is None)]
        rows = [np.array([first], np.int64), np.array([last], np.int64)]
        return [*flags, *rows, *values.values()]


def _assign(target: Target, value: tf.Tensor) -> tf.Operation:
    """`value` assigned to the whole variable (it may keep value's buffer)."""
    if target.resource:
        op: tf.Operation = tf.raw_ops.AssignVariableOp(resource=target.var, value=value)
        return op
    assign = tf.raw_ops.Assign(ref=target.var, value=value, validate_shape=target.validate_shape)
    return assign.op


def _no_run(*args: Any) -> None:
    raise AssertionError("no bank callable yet")


class _Writer:
    """Writes banks unit by unit: times each unit (wall) into `info`. A bank's units are the
    steps of a generator (`_steps`) run through `pacing.run_steps`: by the loading thread, paced,
    or by serving threads after their model calls (app.core.pacing.Piggyback), one thread at a
    time, so the state here is never shared between two running threads."""

    def __init__(self, files: checkpoint.DataFiles, info: RestoreInfo) -> None:
        self._files = files
        self._run: Callable[..., Any] = _no_run
        self._info = info
        self._buffer = bytearray(CHUNK_BYTES)  # reused by every piece but rank-0 ones
        # Asked per piece, from whichever thread runs it (app.core.pacing.Piggyback).
        self._piggybacked = pacing.piggyback_probe()
        self._started = time.perf_counter()

    def _unit(self, args: list[Any], started: float | None = None) -> None:
        self._started = time.perf_counter() if started is None else started
        self._run(*args)
        self._done()

    def _done(self) -> None:
        took = time.perf_counter() - self._started
        self._info.units += 1
        self._info.unit_times.append(took)
        self._info.longest_unit = max(self._info.longest_unit, took)

    def bank(self, bank: _Bank, session: Any) -> None:
        """Allocate every variable of the bank (one unit), then write each in pieces of at
        most CHUNK_BYTES, or BUSY_CHUNK_BYTES while serving threads run them (a row larger
        than that: a piece alone), one piece a unit. Blocks; the loading thread."""
        self._started = time.perf_counter()
        # A new executor, built in one piece (see _Bank): an indivisible unit; it paces.
        self._run = pacing.indivisible(bank.callable, session)
        self._done()
        for target in bank.targets:
            if target.entry.size:
                self._files.prefetch(target.key, target.entry)
        pacing.run_steps(self._steps(bank), BUSY_CHUNK_BYTES)

    def _steps(self, bank: _Bank) -> Iterator[int]:
        """The bank's units as steps (see pacing.run_steps): each yield announces the bytes
        the next step writes (0: no piece, or a small one), so a piece larger than
        BUSY_CHUNK_BYTES (a row alone) is left to the loading thread."""
        yield 0  # next: the allocation
        self._unit(bank.args(-1, None, 0, 0))
        for index, target in enumerate(bank.targets):
            if not target.shape:
                yield target.entry.size
                # Rank 0: a fresh array, since the assign may keep its buffer.
                started = time.perf_counter()
                value = np.empty(1, target.numpy_dtype)
                raw = value.view(np.uint8)
                self._files.read(target.key, target.entry, 0, memoryview(raw.data))
                # google_crc32c takes numpy arrays but not writable memoryviews.
                self._files.check_crc(target.key, target.entry, google_crc32c.value(raw))
                self._unit(bank.args(index, value, 0, 0), started)
                continue
            yield from self._pieces(bank, index, target)

    def _pieces(self, bank: _Bank, index: int, target: Target) -> Iterator[int]:
        rows = target.shape[0]
        if not target.entry.size:
            return
        row_bytes = target.entry.size // rows
        crc = 0
        first = 0
        while first < rows:
            # Chosen where the step before ends, from whichever thread ran it.
            chunk = BUSY_CHUNK_BYTES if self._piggybacked() else CHUNK_BYTES
            last = min(rows, first + max(1, chunk // row_bytes))
            size = (last - first) * row_bytes
            yield size
            if len(self._buffer) < size:
                self._buffer = bytearray(size)
            view = memoryview(self._buffer)[:size]
            started = time.perf_counter()
            self._files.read(target.key, target.entry, first * row_bytes, view)
            crc = google_crc32c.extend(crc, np.frombuffer(view, np.uint8))
            value = np.frombuffer(view, target.numpy_dtype)
            self._unit(bank.args(index, value, first, last), started)
            first = last
        # After the last piece: a failed load is discarded whole.
        self._files.check_crc(target.key, target.entry, crc)


def restore(
    session: Any,
    saver: Any,
    prefix: Path,
    *,
    fallback: Callable[[], None],
) -> RestoreInfo:
    """Restore the variables `saver` restores from checkpoint `prefix` (".../variables/
    variables") into `session`'s graph, in units (see the module docstring), or with
    `fallback()` (TF's restore) when the graph or checkpoint is not one handled here.

    Units run in this thread, each followed by `pacing.pace()`, or, in a paced load while
    requests are in flight, in serving threads right after their model calls
    (`pacing.run_steps`); making a bank's callable (a new executor) is `pacing.indivisible`.
    Adds ops to the graph: call before it is finalized. Raises checkpoint.DataLoss for
    damaged data, tf.errors.OpError from a run.
    """
    if saver is None:
        fallback()
        return RestoreInfo("none")
    graph = session.graph
    try:
        bundle = checkpoint.read_index(prefix)
        targets = plan(graph, saver, bundle)
    except (Unsupported, checkpoint.Unsupported) as exc:
        logger.debug("Restoring %s with TensorFlow's restore op: %s", prefix, exc)
        fallback()
        return RestoreInfo("tf", reason=str(exc))
    info = RestoreInfo("chunked", tensors=len(targets))
    info.bytes = sum(t.entry.size for t in targets)
    with graph.as_default(), tf.name_scope("hotserve_restore"):
        banks = [_Bank(targets[i : i + BANK]) for i in range(0, len(targets), BANK)]
    with checkpoint.DataFiles(bundle) as files:
        writer = _Writer(files, info)
        for bank in banks:
            writer.bank(bank, session)
    return info
