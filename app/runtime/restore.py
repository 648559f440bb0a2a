"""Restore a SavedModel's variables in small units, calling `pace()` between them.

TF's restore (`Saver.restore`: one RestoreV2 op, then one assign per variable) reads every
variable whole in one uninterruptible op: hundreds of ms of CPU for a 1 GiB variable, which the
kernel lets the (niced) loading thread hold in ~5 ms stretches while serving waits for the
core. Here the same bytes go into the same variables in units of at most `CHUNK_BYTES`: each
unit reads a piece of the checkpoint (app.runtime.checkpoint), extends the tensor's CRC32C and
writes the piece into the variable with a strided-slice assign, and `pace()` runs between
units, so whoever paces the load can give the core back to serving.

The saver graph must have the standard pattern TF1 savers build (restore op -> NoOps -> one
`Assign` per ref variable fed by a RestoreV2 output, or `AssignVariableOp` fed through an
`Identity` per resource variable), every entry stored whole, numeric, and matching the
variable's dtype and static shape. Anything else (V1 checkpoints, partitioned or sliced
variables, string variables, a TF2 SavedModel whose restore is a function call, a missing or
mismatching entry) restores exactly as TF does, in one go, and says why at debug: its errors
are then TF's own.

A variable larger than one unit is first given an uninitialized buffer (`Empty(init=False)`
assigned: TF forwards that buffer, nothing is touched) and then filled along dim 0, rows
[a, b) per unit; a single row larger than `CHUNK_BYTES` is one unit. Variables smaller than a
unit are grouped up to `CHUNK_BYTES` per unit. Checksums are verified per tensor (a tensor in
pieces: after its last piece); a mismatch, a short or missing data file raise
checkpoint.DataLoss. All session runs use `run` (the caller's InlineRuns: in this thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import tensorflow as tf

from app.runtime import checkpoint
from app.runtime.restore_plan import Target, Unsupported, plan

logger = logging.getLogger(__name__)

# Bytes per unit. Measured on this 2-core machine (idle core, 64 MiB float32 variable fed
# through a placeholder): a 256 KiB unit (read + crc + assign) took ~0.15-0.25 ms wall, a 1 MiB
# one ~0.8 ms; below 64 KiB the fixed cost of a session run (~60 us) dominates.
CHUNK_BYTES = 256 * 1024
# Variables per bank (see _Bank): one executor each; every unit walks the bank's ops (about
# 8 per variable, all but one variable's skipped as dead).
BANK = 64


@dataclass(slots=True)
class RestoreInfo:
    """How a load restored its variables: `how` is "chunked", "tf" (TF's one-op restore;
    `reason` says why) or "none" (no variables). Times in seconds (wall, this thread)."""

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

    def feed(self, index: int, value: np.ndarray | None, first: int, last: int) -> dict[Any, Any]:
        """The feed writing rows [first, last) of target `index` (-1 with `value` None:
        allocate every target)."""
        feed: dict[Any, Any] = dict(zip(self.values.values(), self.nothing.values(), strict=True))
        feed[self.index] = index
        feed[self.allocate] = value is None
        feed[self.begin] = [first]
        feed[self.end] = [last]
        if value is not None:
            feed[self.values[self.targets[index].dtype]] = value
        return feed


def _assign(target: Target, value: tf.Tensor) -> tf.Operation:
    """`value` assigned to the whole variable (it may keep value's buffer)."""
    if target.resource:
        op: tf.Operation = tf.raw_ops.AssignVariableOp(resource=target.var, value=value)
        return op
    assign = tf.raw_ops.Assign(ref=target.var, value=value, validate_shape=target.validate_shape)
    return assign.op


Run = Callable[..., Any]


class _Writer:
    """Writes banks unit by unit: times each unit (wall, this thread, without the pace) into
    `info` and calls `pace()` after each. One thread."""

    def __init__(
        self, files: checkpoint.DataFiles, run: Run, pace: Callable[[], None], info: RestoreInfo
    ) -> None:
        self._files = files
        self._run = run
        self._pace = pace
        self._info = info
        self._buffer = bytearray(CHUNK_BYTES)  # reused by every piece but rank-0 ones
        self._started = time.perf_counter()

    def _unit(self, bank: _Bank, feed: dict[Any, Any]) -> None:
        self._run(bank.fetches, feed)
        took = time.perf_counter() - self._started
        self._info.units += 1
        self._info.unit_times.append(took)
        self._info.longest_unit = max(self._info.longest_unit, took)
        self._pace()
        self._started = time.perf_counter()

    def bank(self, bank: _Bank) -> None:
        """Allocate every variable of the bank (one unit), then write each in pieces of at
        most CHUNK_BYTES (a row larger than that: a piece alone), one piece a unit."""
        self._started = time.perf_counter()
        self._unit(bank, bank.feed(-1, None, 0, 0))
        for index, target in enumerate(bank.targets):
            if not target.shape:
                # Rank 0: a fresh array, since the assign may keep its buffer.
                value = np.empty(1, target.numpy_dtype)
                raw = value.view(np.uint8)
                self._files.read(target.key, target.entry, 0, memoryview(raw.data))
                # google_crc32c takes numpy arrays but not writable memoryviews.
                self._files.check_crc(target.key, target.entry, google_crc32c.value(raw))
                self._unit(bank, bank.feed(index, value, 0, 0))
                continue
            self._pieces(bank, index, target)

    def _pieces(self, bank: _Bank, index: int, target: Target) -> None:
        rows = target.shape[0]
        if not target.entry.size:
            return
        row_bytes = target.entry.size // rows
        step = max(1, CHUNK_BYTES // row_bytes)
        crc = 0
        for first in range(0, rows, step):
            last = min(rows, first + step)
            size = (last - first) * row_bytes
            if len(self._buffer) < size:
                self._buffer = bytearray(size)
            view = memoryview(self._buffer)[:size]
            self._files.read(target.key, target.entry, first * row_bytes, view)
            crc = google_crc32c.extend(crc, np.frombuffer(view, np.uint8))
            value = np.frombuffer(view, target.numpy_dtype)
            self._unit(bank, bank.feed(index, value, first, last))
        # After the last piece: a failed load is discarded whole.
        self._files.check_crc(target.key, target.entry, crc)


def restore(
    session: Any,
    saver: Any,
    prefix: Path,
    *,
    run: Run,
    pace: Callable[[], None],
    fallback: Callable[[], None],
) -> RestoreInfo:
    """Restore the variables `saver` restores from checkpoint `prefix` (".../variables/
    variables") into `session`'s graph, in units (see the module docstring), or with
    `fallback()` (TF's restore) when the graph or checkpoint is not one handled here.

    `run(fetches, feed_dict)` runs in the session (in this thread); `pace()` is called after
    every unit. Adds ops to the graph: call before it is finalized. Raises checkpoint.DataLoss
    for damaged data, tf.errors.OpError from a run.
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
    pace()
    with checkpoint.DataFiles(bundle) as files:
        writer = _Writer(files, run, pace, info)
        for bank in banks:
            writer.bank(bank)
    return info
