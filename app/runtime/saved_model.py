"""The TensorFlow runtime: load a SavedModel version the way TF Serving does and run it.

`SavedModelLoader.load` imports the MetaGraph into a fresh `tf.Graph` with the steps of the TF1
session loader (`tf.compat.v1.saved_model.loader.load`: import, restore, init ops), which,
unlike `tf.saved_model.load`, handles every model TF Serving serves (TF1 graphs with ref-typed
variables, TF2 SavedModels, graphs without variables). The restore runs in small paced units
where the saver graph allows (app.runtime.restore), else as TF's one op.

`SavedModelServable.run` feeds through callables made with `Session._make_callable_from_options`
(TF's C API path, as TF Serving): declared static shapes are not enforced, so an input declared
`[-1, 1]` accepts shape `[3]` or a scalar. One callable is made per (signature, fed aliases) and
cached; calls are thread-safe. `load`, `run`, `warmup` and `unload` block: call them from a
worker thread. The registry guarantees no `run` is in flight when `unload` is called.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.saved_model import loader_impl

from app import errors
from app.core import pacing
from app.core.layout import saved_model_file
from app.core.servable import Example
from app.core.types import Signature, TensorSpec
from app.runtime import checkpoint
from app.runtime import examples as examples_mod
from app.runtime import restore as restore_mod
from app.runtime import warmup as warmup_mod
from app.runtime.memory import note_unload, tf_env
from app.runtime.restore import RestoreInfo

logger = logging.getLogger(__name__)

# Where TF appends the failing node and Python traces to an op's message.
_MESSAGE_TAILS = ("\n\t [[", "\n\nOriginal stack trace", "\n\nDetected at node")


def op_error_message(exc: tf.errors.OpError) -> str:
    """TF's message without the node/stack-trace tail."""
    message: str = exc.message
    if message.startswith("Graph execution error:"):
        # Python-traced form: the real message follows the "Node: '<name>'" line.
        _, sep, rest = message.partition("\nNode: '")
        if sep:
            message = rest.partition("\n")[2]
    for tail in _MESSAGE_TAILS:
        message = message.partition(tail)[0]
    return message.strip()


def numpy_dtype(dtype_enum: int) -> np.dtype[Any] | None:
    """numpy dtype fed for a TF DataType (object for DT_STRING); None when there is none."""
    try:
        base = tf.dtypes.as_dtype(dtype_enum).base_dtype
    except TypeError:
        return None
    if base == tf.string:
        return np.dtype(object)
    try:
        dtype: np.dtype[Any] = np.dtype(base.as_numpy_dtype)
    except TypeError:
        return None
    return dtype


def _tensor_spec(alias: str, info: Any) -> TensorSpec:
    shape_proto = info.tensor_shape
    shape = None if shape_proto.unknown_rank else tuple(int(d.size) for d in shape_proto.dim)
    return TensorSpec(alias, types_pb2.DataType.Name(info.dtype), shape, info.name)


def to_signature(key: str, signature_def: Any) -> Signature:
    """Convert a SignatureDef proto into the core `Signature`."""
    return Signature(
        name=key,
        method_name=signature_def.method_name,
        inputs={a: _tensor_spec(a, i) for a, i in sorted(signature_def.inputs.items())},
        outputs={a: _tensor_spec(a, i) for a, i in sorted(signature_def.outputs.items())},
    )


@dataclass(frozen=True, slots=True)
class _Feed:
    """A compiled callable: fed aliases (in argument order) with their dtypes, fetched aliases."""

    inputs: tuple[tuple[str, np.dtype[Any] | None], ...]
    outputs: tuple[str, ...]
    fn: Callable[..., Sequence[Any]]


def _cast(alias: str, value: Any, dtype: np.dtype[Any] | None) -> Any:
    """`value` as an array of `dtype` when numpy can cast it without changing its kind.

    Strings are fed unchanged whatever the declared dtype: TF Serving never casts, and some
    models declare a wrong dtype (half_plus_three's regress input is declared float but is
    really the serialized-Example string placeholder). TF rejects real mismatches at run time.
    """
    if dtype is None or (type(value) is np.ndarray and value.dtype == dtype):
        return value
    if dtype.kind == "O":
        # Not via a fixed-width "S" array, which would drop trailing NUL bytes.
        return value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
    array = np.asarray(value)
    kind = array.dtype.kind
    if kind in "SU" or (kind == "O" and array.size and isinstance(array.flat[0], bytes | str)):
        return array
    try:
        if kind == "O":  # Python numbers in an object array
            return array.astype(dtype)
        return array.astype(dtype, casting="same_kind", copy=False)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidArgument(
            f"Input '{alias}' cannot be converted to {dtype.name}: {exc}"
        ) from None


def _as_array(value: Any) -> np.ndarray:
    """A fetched output as an array. TF returns a 0-d DT_STRING output as Python `bytes`:
    kept in an object array, since a fixed-width "S" array would drop its trailing NUL bytes."""
    if isinstance(value, bytes):
        return np.array(value, dtype=object)
    return np.asarray(value)


class SavedModelServable:
    """One loaded SavedModel version (implements app.core.servable.Servable)."""

    def __init__(
        self,
        path: Path,
        session: Any,
        signature_defs: Mapping[str, Any],
        restored: RestoreInfo | None = None,
    ) -> None:
        self._path = path
        self.restored = restored
        self._session: Any = session
        self._signature_defs = dict(signature_defs)
        self._signatures = {k: to_signature(k, v) for k, v in sorted(signature_defs.items())}
        self._feeds: dict[tuple[str, frozenset[str]], _Feed] = {}
        self._lock = threading.Lock()
        # One input set per (signature, fed aliases) the warmup ran: run again at every batch
        # size by `warm_batch_sizes`.
        self._warm_inputs: dict[tuple[str, frozenset[str]], dict[str, np.ndarray]] = {}

    @property
    def path(self) -> Path:
        return self._path

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `signature`; see the Servable protocol. Thread-safe; no logging on this path."""
        key = (signature, frozenset(inputs))
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._make_feed(key)
        args = [_cast(alias, inputs[alias], dtype) for alias, dtype in feed.inputs]
        try:
            values = feed.fn(*args)
        except tf.errors.OpError as exc:
            raise _run_error(exc) from None
        return {alias: _as_array(v) for alias, v in zip(feed.outputs, values, strict=True)}

    def _make_feed(self, key: tuple[str, frozenset[str]]) -> _Feed:
        signature, fed = key
        sigdef = self._signature_defs.get(signature)
        if sigdef is None:
            raise errors.InvalidArgument(
                f'Serving signature name: "{signature}" not found in signature def'
            )
        if not sigdef.inputs:
            raise errors.InvalidArgument(f"Failed to get input map for signature: {signature}")
        _check_fed_aliases(signature, sigdef, fed)
        aliases = sorted(fed)
        outputs = sorted(sigdef.outputs)
        infos = [sigdef.inputs[a] for a in aliases] + [sigdef.outputs[a] for a in outputs]
        if any(info.WhichOneof("encoding") != "name" for info in infos):
            raise errors.Unimplemented(
                f"Signature {signature} has sparse or composite tensors, which are not supported"
            )
        options = config_pb2.CallableOptions(
            feed=[sigdef.inputs[a].name for a in aliases],
            fetch=[sigdef.outputs[a].name for a in outputs],
        )
        with self._lock:
            feed = self._feeds.get(key)
            if feed is not None:
                return feed
            if self._session is None:
                raise errors.Unavailable("The servable has been unloaded")
            try:
                fn = self._session._make_callable_from_options(options)
            except tf.errors.OpError as exc:
                raise _run_error(exc) from None
            dtypes = tuple(numpy_dtype(sigdef.inputs[a].dtype) for a in aliases)
            feed = _Feed(tuple(zip(aliases, dtypes, strict=True)), tuple(outputs), fn)
            self._feeds[key] = feed
            return feed

    def metadata(self) -> dict[str, Any]:
        """TF Serving's metadata: every SignatureDef as proto3 JSON with snake_case names."""
        defs = {
            key: json_format.MessageToDict(
                sigdef,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
            for key, sigdef in self._signature_defs.items()
        }
        return {"signature_def": {"signature_def": defs}}

    def serialize_examples(
        self, context: Example | None, examples: Sequence[Example]
    ) -> np.ndarray:
        """Serialized tf.Example protos (see app.runtime.examples); any thread may call it."""
        ctx = examples_mod.from_features(context) if context else None
        return examples_mod.serialize(ctx, [examples_mod.from_features(e) for e in examples])

    def prepare(self) -> int:
        """Make the callable of every signature (all its inputs fed) now, in the loading
        thread, instead of in the first request's model call: for a 1 GiB model that call took
        4-15 ms, and every request queued for the new version waited for it. Signatures whose
        callable cannot be made (sparse inputs...) are left to fail at request time, as
        before. Returns the number made."""
        made = 0
        for name, sigdef in self._signature_defs.items():
            if not sigdef.inputs:
                continue
            try:
                pacing.indivisible(self._make_feed, (name, frozenset(sigdef.inputs)))
            except Exception as exc:  # never fails a load: the request will say what is wrong
                logger.debug("callable of signature %s not made at load: %r", name, exc)
                continue
            made += 1
        return made

    def _remember(self, signature: str, inputs: dict[str, np.ndarray]) -> None:
        self._warm_inputs.setdefault((signature, frozenset(inputs)), inputs)

    def warmup(self, iterations: int) -> int:
        """Replay assets.extra/tf_serving_warmup_requests (see app.runtime.warmup)."""
        return warmup_mod.replay(self, self._path, iterations, self._remember)

    def synthetic_warmup(self) -> int:
        """Run each signature once on a generated 1-row batch (see app.runtime.warmup)."""
        return warmup_mod.run_synthetic(self, self._remember)

    def warm_batch_sizes(self, sizes: Sequence[int], while_idle: Sequence[int] = ()) -> int:
        """Run what the warmup ran again at each row count of `sizes`, then of `while_idle`
        as long as no request is in flight (see app.runtime.warmup.run_batch_sizes); returns
        the number of sizes run. Blocks: the loading thread."""
        samples = [(key[0], inputs) for key, inputs in self._warm_inputs.items()]
        return warmup_mod.run_batch_sizes(self, samples, sizes, while_idle)

    def unload(self) -> None:
        """Drop the callables and close the session. Idempotent."""
        with self._lock:
            session, self._session = self._session, None
            self._feeds = {}
        if session is not None:
            session.close()
            note_unload()
            logger.info("Unloaded SavedModel %s", self._path)


def _run_error(exc: tf.errors.OpError) -> errors.HotserveError:
    message = op_error_message(exc)
    if message.startswith("Unsupported object type"):
        # TF's INTERNAL for a non-bytes element in an object array: a bad request, not a bug.
        return errors.InvalidArgument(message)
    # TF Serving hands the op's status to the client unchanged: keep its code (OUT_OF_RANGE,
    # ABORTED, DATA_LOSS... each map to TF Serving's HTTP status in app.api.errors).
    return errors.error_for(errors.code_name(exc.error_code), message)


def _check_fed_aliases(signature: str, sigdef: Any, fed: frozenset[str]) -> None:
    expected = set(sigdef.inputs)
    extra = sorted(fed - expected)
    missing = sorted(expected - set(sigdef.defaults) - fed)
    if extra or missing:
        raise errors.InvalidArgument(
            f"Request inputs do not match the inputs of signature {signature}. "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )


def session_config(intra_op_threads: int, inter_op_threads: int) -> Any:
    """The ConfigProto of a version's session: TF's defaults (as TF Serving's), the thread
    counts given (0 = TF's choice), and grappler's TFG optimizer off. Its default pipeline
    (tensorflow/core/grappler/optimizers/tfg_passes_builder.cc `DefaultGrapplerPipeline`) takes
    the graph through MLIR for a shape inference and back, leaving the executed graph as it was,
    and costs ~25% of making each callable. Why it matters: making a callable is a step of a
    load that cannot be cut, run at SCHED_IDLE while requests are in flight, and on a saturated
    core each millisecond of it costs the load ~0.3 s of wall time and the requests a share of a
    4 ms stretch without the core (app.core.ticker). Measured (demo MLP, idle, one core, medians
    of 5 loads): the restore bank's callable 9.8 -> 7.4 ms of CPU, the signature's 4.7 -> 3.3
    ms; the executed graphs (`RunMetadata.partition_graphs`) identical to TF's defaults for the
    demo models, TF Serving's test models and a Conv2D+BiasAdd+Relu+FusedBatchNorm model
    (tests/runtime/test_saved_model.py). Every other pass runs as in TF Serving (the memory
    optimizer too: it may rewrite an AddN, which could change a sum's rounding)."""
    config = config_pb2.ConfigProto(
        intra_op_parallelism_threads=intra_op_threads,
        inter_op_parallelism_threads=inter_op_threads,
    )
    config.graph_options.rewrite_options.disable_tfg_optimizer = True
    return config


class SavedModelLoader:
    """Loads a version directory into a `SavedModelServable` (implements core's Loader)."""

    def __init__(
        self,
        tags: Sequence[str] = ("serve",),
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ) -> None:
        self._tags = list(tags)
        self._intra_op_threads = intra_op_threads
        self._inter_op_threads = inter_op_threads
        logger.info(
            "TensorFlow %s, %s GLIBC_TUNABLES=%s",
            tf.__version__,
            " ".join(f"{k}={v or '(unset)'}" for k, v in tf_env().items()),
            os.environ.get("GLIBC_TUNABLES") or "(unset)",
        )

    def load(self, path: Path) -> SavedModelServable:
        """Load the SavedModel in `path`. Raises app.errors.LoadError with a TF code.

        The work is cut into units of a paced load (app.core.pacing, the calling thread's
        pacer): the graph import, each restore unit of at most restore.CHUNK_BYTES, the init
        ops, each callable."""
        _check_layout(path)
        start = time.monotonic()
        config = session_config(self._intra_op_threads, self._inter_op_threads)
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=config)
        try:
            meta_graph, restored = _load_meta_graph(session, self._tags, path)
            # Nothing may add ops after loading: keeps the graph safe to share across threads.
            graph.finalize()
        except BaseException:
            session.close()
            raise
        servable = SavedModelServable(path, session, meta_graph.signature_def, restored)
        servable.prepare()
        logger.info(
            "Loaded SavedModel %s (%d signatures) in %.3f s; variables restored: %s (%d units)",
            path,
            len(servable.signatures),
            time.monotonic() - start,
            restored.how,
            restored.units,
        )
        return servable


def _check_layout(path: Path) -> None:
    proto = saved_model_file(path)
    if proto is None:
        raise errors.LoadError(
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
            errors.Code.NOT_FOUND,
        )
    if proto.name == "saved_model.pb" and proto.stat().st_size == 0:
        raise errors.LoadError(f"SavedModel file is empty: {proto}", errors.Code.DATA_LOSS)


class InlineRuns:
    """A session as TF's SavedModel loader sees it, whose `run` calls execute every op in the
    calling thread (RunOptions.inter_op_thread_pool = -1) instead of in TensorFlow's inter-op
    pool.

    Why: every session of the process shares TF's one inter-op pool (its size is
    --tensorflow_inter_op_parallelism), and a single op runs on one pool thread from start to
    end. The load's RestoreV2 op reads the whole checkpoint in one go, so model calls of the
    serving version queued behind it: no request completed for the whole read (measured with
    bench_swap's per-swap mode: 45 ms for a 64 MiB model, 0.8-3.1 s for 1 GiB; py-spy showed
    the inference thread waiting in Executor::Run while the pool ran the restore). Run in the
    loading thread, the restore and the init ops take that thread's (lowered) priority and
    leave the pool to serving. Everything else is the real session's.
    """

    def __init__(self, session: Any) -> None:
        self._session = session

    def run(
        self,
        fetches: Any,
        feed_dict: Any = None,
        options: Any = None,
        run_metadata: Any = None,
    ) -> Any:
        merged = config_pb2.RunOptions()
        if options is not None:
            merged.CopyFrom(options)
        merged.inter_op_thread_pool = -1
        return self._session.run(fetches, feed_dict, merged, run_metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _load_meta_graph(session: Any, tags: list[str], path: Path) -> tuple[Any, RestoreInfo]:
    """TF's `loader.load` in its steps (import the graph, restore, run the init ops), with the
    restore in paced units (app.runtime.restore)."""

    def fail(detail: str, code: errors.Code) -> errors.LoadError:
        return errors.LoadError(f"Failed to load SavedModel at {path}: {detail}", code)

    runs = InlineRuns(session)
    try:
        loader = loader_impl.SavedModelLoader(str(path))
        # A graph import, TF's own restore and the init ops' run (a new executor) cannot be
        # cut: each is one indivisible unit of the paced load (app.core.pacing).
        with pacing.gil_heavy():
            saver, _ = pacing.indivisible(loader.load_graph, session.graph, tags)
        with session.graph.as_default():
            info = restore_mod.restore(
                session,
                saver,
                path / "variables" / "variables",  # the loader's checkpoint prefix
                fallback=lambda: pacing.indivisible(loader.restore_variables, runs, saver),
            )
        pacing.indivisible(loader.run_init_ops, runs, tags)
        return loader.get_meta_graph_def_from_tags(tags), info
    except checkpoint.DataLoss as exc:
        raise fail(str(exc), errors.Code(exc.code)) from exc
    except tf.errors.OpError as exc:
        raise fail(op_error_message(exc), errors.code_name(exc.error_code)) from exc
    except (OSError, ValueError) as exc:
        # After _check_layout these are unreadable files: corrupt proto, missing checkpoint.
        raise fail(str(exc), errors.Code.DATA_LOSS) from exc
    except RuntimeError as exc:
        code = errors.Code.NOT_FOUND
        if "could not be found in SavedModel" not in str(exc):
            code = errors.Code.UNKNOWN
        raise fail(str(exc), code) from exc
    except Exception as exc:
        raise fail(f"{type(exc).__name__}: {exc}", errors.Code.UNKNOWN) from exc
