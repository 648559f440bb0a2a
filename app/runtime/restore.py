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
# Variables per bank (see _Writer): each unit feeds and runs a put op for every variable of
# its bank, most of them writing 0 rows.
BANK = 16


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


@dataclass(slots=True)
class _Ops:
    """The ops that write one target of rank >= 1: `alloc` gives the variable an uninitialized
    buffer, `put` writes rows [begin, end) fed through `value`."""

    target: Target
    value: tf.Tensor
    begin: tf.Tensor
    end: tf.Tensor
    alloc: tf.Operation
    put: tf.Operation
    nothing: np.ndarray  # a 0-row value: this target's feed in a unit that does not write it


def _build(target: Target) -> _Ops:
    """Ops writing `target`; call with the graph as default, before it is finalized."""
    raw = tf.raw_ops
    shape = list(target.shape)
    value = tf.compat.v1.placeholder(target.dtype, [None, *shape[1:]])
    begin = tf.compat.v1.placeholder(tf.int64, [1])
    end = tf.compat.v1.placeholder(tf.int64, [1])
    empty = raw.Empty(shape=shape, dtype=target.dtype, init=False)
    strides = tf.constant([1], tf.int64)
    nothing = np.empty((0, *shape[1:]), target.numpy_dtype)
    if target.resource:
        alloc = raw.AssignVariableOp(resource=target.var, value=empty)
        put = raw.ResourceStridedSliceAssign(
            ref=target.var, begin=begin, end=end, strides=strides, value=value
        )
        return _Ops(target, value, begin, end, alloc, put, nothing)
    alloc = raw.Assign(ref=target.var, value=empty, validate_shape=target.validate_shape).op
    put = raw.StridedSliceAssign(ref=target.var, begin=begin, end=end, strides=strides, value=value)
    return _Ops(target, value, begin, end, alloc, put.op, nothing)


def _build_scalar(target: Target) -> tuple[tf.Tensor, tf.Operation]:
    """(placeholder, assign) writing a rank-0 target whole."""
    value = tf.compat.v1.placeholder(target.dtype, [])
    if target.resource:
        return value, tf.raw_ops.AssignVariableOp(resource=target.var, value=value)
    assign = tf.raw_ops.Assign(ref=target.var, value=value, validate_shape=target.validate_shape)
    return value, assign.op


Run = Callable[..., Any]
_NO_ROWS = np.zeros(1, np.int64)


@dataclass(slots=True)
class _Piece:
    """Rows [first, last) of one target, `start` bytes into its entry."""

    ops: _Ops
    first: int
    last: int
    start: int
    size: int


def _pieces(ops: _Ops) -> list[_Piece]:
    """A target's rows in pieces of at most CHUNK_BYTES (a larger row is a piece alone)."""
    rows = ops.target.shape[0]
    if not rows or not ops.target.entry.size:
        return []
    row_bytes = ops.target.entry.size // rows
    step = max(1, CHUNK_BYTES // row_bytes)
    return [
        _Piece(ops, first, last, first * row_bytes, (last - first) * row_bytes)
        for first in range(0, rows, step)
        for last in (min(rows, first + step),)
    ]


class _Writer:
    """Writes the targets unit by unit: times each unit (wall, this thread, without the pace)
    into `info` and calls `pace()` after each. One thread.

    Every distinct set of fetched ops costs the session a new executor on its first run (with
    TF's graph optimizer: 2-3 ms for a small graph, measured, in one piece). So variables go in
    banks of at most BANK: one run allocates a whole bank, and every unit of the bank fetches
    all its `put` ops, feeding 0 rows to those it does not write."""

    def __init__(
        self, files: checkpoint.DataFiles, run: Run, pace: Callable[[], None], info: RestoreInfo
    ) -> None:
        self._files = files
        self._run = run
        self._pace = pace
        self._info = info
        self._buffer = bytearray(CHUNK_BYTES)  # reused: each unit's pieces are read into it
        self._crcs: dict[str, int] = {}
        self._started = time.perf_counter()

    def _unit(self, fetches: Any, feed: dict[Any, Any]) -> None:
        self._run(fetches, feed)
        took = time.perf_counter() - self._started
        self._info.units += 1
        self._info.unit_times.append(took)
        self._info.longest_unit = max(self._info.longest_unit, took)
        self._pace()
        self._started = time.perf_counter()

    def scalars(self, scalars: Sequence[tuple[Target, tf.Tensor, tf.Operation]]) -> None:
        """Every rank-0 target in one unit (a few bytes each)."""
        self._started = time.perf_counter()
        feed = {}
        for target, value, _ in scalars:
            array = np.empty((), target.numpy_dtype)  # fresh: the assign may keep its buffer
            raw = array.reshape(-1).view(np.uint8)
            self._files.read(target.key, target.entry, 0, memoryview(raw.data))
            # google_crc32c takes numpy arrays but not writable memoryviews.
            self._files.check_crc(target.key, target.entry, google_crc32c.value(raw))
            feed[value] = array
        self._unit([assign for _, _, assign in scalars], feed)

    def bank(self, bank: Sequence[_Ops]) -> None:
        """Allocate the bank's variables (one unit), then fill them, CHUNK_BYTES a unit."""
        self._started = time.perf_counter()
        self._unit([ops.alloc for ops in bank], {})
        unit: list[_Piece] = []
        used = 0
        for ops in bank:
            self._crcs[ops.target.key] = 0
            for piece in _pieces(ops):
                if unit and (used + piece.size > CHUNK_BYTES or unit[-1].ops is ops):
                    self._fill(bank, unit)
                    unit, used = [], 0
                unit.append(piece)
                used += piece.size
        if unit:
            self._fill(bank, unit)
        for ops in bank:
            target = ops.target
            self._files.check_crc(target.key, target.entry, self._crcs.pop(target.key))

    def _fill(self, bank: Sequence[_Ops], unit: Sequence[_Piece]) -> None:
        """One unit: read each piece into the buffer, extend its CRC, write it."""
        need = sum(piece.size for piece in unit)
        if len(self._buffer) < need:  # a row larger than CHUNK_BYTES
            self._buffer = bytearray(need)
        feed: dict[Any, Any] = {}
        for ops in bank:
            feed[ops.value], feed[ops.begin], feed[ops.end] = ops.nothing, _NO_ROWS, _NO_ROWS
        at = 0
        for piece in unit:
            target = piece.ops.target
            view = memoryview(self._buffer)[at : at + piece.size]
            at += piece.size
            self._files.read(target.key, target.entry, piece.start, view)
            self._crcs[target.key] = google_crc32c.extend(
                self._crcs[target.key], np.frombuffer(view, np.uint8)
            )
            rows = np.frombuffer(view, target.numpy_dtype)
            feed[piece.ops.value] = rows.reshape((piece.last - piece.first, *target.shape[1:]))
            feed[piece.ops.begin] = [piece.first]
            feed[piece.ops.end] = [piece.last]
        self._unit([ops.put for ops in bank], feed)


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
        scalars = [(t, *_build_scalar(t)) for t in targets if not t.shape]
        built = [_build(t) for t in targets if t.shape]
    pace()
    with checkpoint.DataFiles(bundle) as files:
        writer = _Writer(files, run, pace, info)
        if scalars:
            writer.scalars(scalars)
        for first in range(0, len(built), BANK):
            writer.bank(built[first : first + BANK])
    return info
