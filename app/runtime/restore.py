"""Restore a SavedModel's variables in small units, paced by app.core.pacing.

TF's restore (`Saver.restore`: one RestoreV2 op, then one assign per variable) reads every
variable whole in one uninterruptible op: hundreds of ms of CPU for a 1 GiB variable, which the
kernel lets the (niced) loading thread hold in ~5 ms stretches while serving waits for the
core. Here the same bytes go into the same variables in units of at most `CHUNK_BYTES`
(`BUSY_CHUNK_BYTES` while requests are in flight): each unit reads a piece of the checkpoint
(app.runtime.checkpoint, not RestoreV2: asked for a slice of a tensor stored whole, RestoreV2
reads the whole tensor each time) straight into the variable's memory and extends the tensor's
CRC32C; app.core.pacing's `pace()` runs between units, so the load's pacer can give the core
back to serving. While requests are in flight the serving threads run the units instead, each
right after a model call (`pacing.run_steps`, app.core.pacing.Piggyback). The data files are
opened, and read ahead by the kernel, on the loading thread first, so a serving thread's read
finds the page cache.

Which graphs: see app.runtime.restore_plan (TF1 savers and TF2 traced restore functions with
every entry stored whole, numeric, of the variable's dtype and shape). Anything else (V1
checkpoints, partitioned or string variables, a missing or mismatching entry, an index this
reader does not handle, a big-endian host) restores exactly as TF does, in one go
(`fallback`), and says why at debug: its errors are then TF's own. So does a session whose
outputs are copies of the variables rather than their memory (see _Bank), with a warning.

A bank of variables is first given uninitialized buffers (`Empty(init=False)` assigned: TF
keeps that buffer, nothing is touched) by one run of one callable that also fetches every
variable back: TF hands the outputs to Python as numpy arrays over the variables' own memory
(see _Bank), and the units fill them byte range by byte range, in the checkpoint's layout (C
order). Checksums are verified per tensor after its last piece (a failed load is discarded
whole); a mismatch, a short or missing data file raise checkpoint.DataLoss (carrying RestoreV2's
code for it). The arrays are dropped after each bank's last piece, on failure too, so that
each variable holds the only reference to its buffer (else TF copies it at the first sparse
access). The callable is made with RunOptions inter_op_thread_pool=-1 (as InlineRuns): it runs
in the loading thread, never TF's shared pool. What cannot be cut: the session's first run (in
it TF builds its execution state from the whole graph and runs its graph optimizer: 10-20 ms for
the demo MLP, ~110 ms for a graph holding 48 MiB of constants; TF's own restore pays it too) and
each further bank's executor (see _Bank). Measured (scripts/bench_swap/restore.py, idle
machine, medians of 3): 1 GiB float32 variable, 0.55 s of CPU in 32 KiB units (15 us each)
against 1.07 s (29 us) with an assign op per unit as before, and 0.57 s for TF's own restore,
most of it the page faults of the fresh memory; 64 MiB 42 ms in 128 KiB units (before 71 ms;
TF 42 ms); the demo MLP 21 ms (before 34 ms; TF 8 ms), 12 ms of it the bank's callable (before
19 ms).
"""

from __future__ import annotations

import logging
import sys
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

# Bytes per unit on the loading thread: its pacer sleeps after each unit in proportion to it,
# so a unit is at most one pause's worth of work (1 GiB, idle: 54 us median per 128 KiB unit,
# read + page faults + CRC32C; the whole restore 0.47 s of CPU).
CHUNK_BYTES = 128 * 1024
# Bytes per unit while serving threads run the units (app.core.pacing.Piggyback): each delays
# one batch by its length, so shorter is better for the tail until the per-unit cost dominates.
# bench_swap, 1 GiB, saturated core, share 0.05: 128 KiB units cost ~0.4 ms of CPU each under
# load, and p99 in the swap window was 1.19-1.26x steady (2 swaps); 32 KiB units ~0.11-0.14 ms,
# 1.10-1.11x pooled per run (11 swaps, three runs); those units still ran an assign op each
# (~0.1 ms of CPU under load whatever its size), now a read into the variable (15 us idle).
BUSY_CHUNK_BYTES = 32 * 1024
# Variables per bank (see _Bank): one executor each, run once; its outputs (numpy arrays over
# every variable of the bank) live until the bank's last unit.
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
    """One executor's worth of targets: a run gives every target a fresh, untouched buffer
    (`Empty(init=False)` assigned: TF keeps that buffer) and fetches it back, so that the
    outputs are numpy arrays over the variables' own memory, which the units then fill.

    Why one executor for many variables: every distinct set of fetched ops costs the session a
    new executor on its first run, built in one piece with TF's graph optimizer over the whole
    graph (measured: 2-5 ms for the demo MLP, 30-100 ms for a graph holding 48 MiB of
    constants). Why the variables' memory rather than an assign op per piece: a callable run
    costs ~0.1 ms of CPU under load whatever it writes; a 32 KiB piece read straight into the
    variable costs ~0.02 ms, most of it the page faults of fresh memory (so a 1 GiB restore
    needs about half the CPU). TF's session hands numeric outputs to Python without a copy
    (`TF_TensorToMaybeAliasedPyArray`) and a variable's read shares its buffer unless the
    variable is in copy-on-read mode (after a sparse access); `run` checks both for every
    variable: each is read by two ops, and two copies would have two addresses (`NotAliased`).
    The arrays must be dropped before the variables are used: while one is alive the variable's
    buffer is shared, and TF copies a shared buffer at its first sparse access
    (`EnsureSparseVariableAccess`). Build with the graph as default, before it is finalized.
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        self.fetches: list[tf.Tensor] = []
        for target in targets:
            empty = tf.raw_ops.Empty(shape=list(target.shape), dtype=target.dtype, init=False)
            with tf.control_dependencies([_assign(target, empty)]):
                for _ in range(2):
                    if target.resource:
                        read = tf.raw_ops.ReadVariableOp(resource=target.var, dtype=target.dtype)
                    else:
                        read = tf.identity(target.var)  # forwards the ref's buffer
                    # Flat, as TF's reshape shares the buffer: a rank-0 output would reach
                    # Python as a numpy scalar (a copy).
                    self.fetches.append(tf.reshape(read, [-1]))
            pacing.pace()  # building ops is Python work too: ~8 per variable

    def callable(self, session: Any) -> Callable[[], list[np.ndarray]]:
        """The bank's one callable (one executor), run in the calling thread (RunOptions
        inter_op_thread_pool=-1, as InlineRuns)."""
        options = config_pb2.CallableOptions(
            fetch=[t.name for t in self.fetches],
            run_options=config_pb2.RunOptions(inter_op_thread_pool=-1),
        )
        fn: Callable[[], list[np.ndarray]] = session._make_callable_from_options(options)
        return fn

    def run(self, fn: Callable[[], list[np.ndarray]]) -> list[memoryview]:
        """Allocate every target and return each one's memory as writable bytes (dim 0 first,
        C order: the checkpoint's layout). Raises NotAliased if TF copied its outputs."""
        arrays = fn()
        views = []
        for target, array, again in zip(self.targets, arrays[::2], arrays[1::2], strict=True):
            raw = np.ascontiguousarray(array).view(np.uint8).data
            if raw.nbytes != target.entry.size:
                raise NotAliased(f"variable {target.key} does not have its entry's size")
            # An empty array's address means nothing (numpy allocates one for it).
            if raw.nbytes and (
                _address(array) != _address(again)
                or _address(array) != _address(np.asarray(raw))
                or not array.flags.writeable
            ):
                raise NotAliased(f"the reads of variable {target.key} are copies")
            views.append(raw)
        return views


class NotAliased(Exception):
    """The session's outputs are not the variables' memory (see _Bank)."""


def _address(array: np.ndarray) -> int:
    address: int = array.__array_interface__["data"][0]
    return address


def _assign(target: Target, value: tf.Tensor) -> tf.Operation:
    """`value` assigned to the whole variable (it may keep value's buffer)."""
    if target.resource:
        op: tf.Operation = tf.raw_ops.AssignVariableOp(resource=target.var, value=value)
        return op
    assign = tf.raw_ops.Assign(ref=target.var, value=value, validate_shape=target.validate_shape)
    return assign.op


class _Writer:
    """Writes banks unit by unit: times each unit (wall) into `info`. A bank's units are the
    steps of a generator (`_steps`) run through `pacing.run_steps`: by the loading thread, paced,
    or by serving threads after their model calls (app.core.pacing.Piggyback), one thread at a
    time, so the state here is never shared between two running threads."""

    def __init__(self, files: checkpoint.DataFiles, info: RestoreInfo) -> None:
        self._files = files
        self._info = info
        # Asked per piece, from whichever thread runs it (app.core.pacing.Piggyback).
        self._piggybacked = pacing.piggyback_probe()

    def _done(self, started: float) -> None:
        took = time.perf_counter() - started
        self._info.units += 1
        self._info.unit_times.append(took)
        self._info.longest_unit = max(self._info.longest_unit, took)

    def bank(self, bank: _Bank, session: Any) -> None:
        """Allocate every variable of the bank (one unit), then fill each in pieces of at
        most CHUNK_BYTES, or BUSY_CHUNK_BYTES while serving threads run them, one piece a
        unit. Blocks; the loading thread. Raises NotAliased (before this bank's first piece;
        its variables then hold uninitialized buffers, which TF's restore overwrites),
        checkpoint.DataLoss."""
        started = time.perf_counter()
        # A new executor, built in one piece (see _Bank): an indivisible unit; it paces.
        fn = pacing.indivisible(bank.callable, session)
        self._done(started)
        for target in bank.targets:
            if target.entry.size:
                self._files.prefetch(target.key, target.entry)
        started = time.perf_counter()
        views = bank.run(fn)  # no bytes touched: a small unit, run here
        self._done(started)
        pacing.pace()
        pacing.run_steps(self._steps(bank.targets, views), BUSY_CHUNK_BYTES)

    def _steps(self, targets: list[Target], views: list[memoryview]) -> Iterator[int]:
        """The pieces as steps (see pacing.run_steps): each yield announces the bytes the next
        step writes. Drops every view when done or abandoned (see _Bank)."""
        try:
            for target, view in zip(targets, views, strict=True):
                crc = 0
                done = 0
                while done < view.nbytes:
                    # Chosen where the step before ends, from whichever thread ran it.
                    chunk = BUSY_CHUNK_BYTES if self._piggybacked() else CHUNK_BYTES
                    size = min(chunk, view.nbytes - done)
                    yield size
                    started = time.perf_counter()
                    # Released on every path: a traceback keeping a slice would keep the
                    # variable's buffer shared (and alive, were the load failing).
                    with view[done : done + size] as piece:
                        self._files.read(target.key, target.entry, done, piece)
                        # google_crc32c takes numpy arrays but not writable memoryviews.
                        crc = google_crc32c.extend(crc, np.frombuffer(piece, np.uint8))
                    done += size
                    self._done(started)
                if target.entry.size:
                    # After the last piece: a failed load is discarded whole.
                    self._files.check_crc(target.key, target.entry, crc)
        finally:
            for view in views:
                view.release()
            views.clear()


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
        if sys.byteorder != "little":
            # The bundle's bytes are little-endian and go into the variables' memory as they are.
            raise Unsupported("a big-endian host")
        bundle = checkpoint.read_index(prefix)
        targets = plan(graph, saver, bundle)
    except (Unsupported, checkpoint.Unsupported) as exc:
        logger.debug("Restoring %s with TensorFlow's restore op: %s", prefix, exc)
        fallback()
        return RestoreInfo("tf", reason=str(exc))
    info = RestoreInfo("chunked", tensors=len(targets))
    info.bytes = sum(t.entry.size for t in targets)
    with graph.as_default(), tf.name_scope("hotserve_restore"), pacing.gil_heavy():
        banks = [_Bank(targets[i : i + BANK]) for i in range(0, len(targets), BANK)]
    try:
        with checkpoint.DataFiles(bundle) as files:
            writer = _Writer(files, info)
            for bank in banks:
                writer.bank(bank, session)
    except NotAliased as exc:
        logger.warning("Restoring %s with TensorFlow's restore op: %s", prefix, exc)
        fallback()
        return RestoreInfo("tf", reason=str(exc))
    return info
