"""Model warmup, as TF Serving does it (servables/tensorflow/saved_model_warmup*.cc).

`replay` runs the PredictionLog records of `<version>/assets.extra/tf_serving_warmup_requests`
(a TFRecord file) against a freshly loaded servable; any bad or failing record raises
app.errors.LoadError so the version never becomes AVAILABLE. `run_synthetic` is hotserve's own
fallback for models without a warmup file. Both block: call them from a worker thread. Each
model call is one unit of a paced load (app.core.pacing): it may sleep after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from app import errors
from app.core import pacing
from app.core.types import Signature, TensorSpec
from app.runtime import examples as examples_mod

logger = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000
DEFAULT_SIGNATURE = "serving_default"

# (signature key, inputs) pairs one record expands to (several for multi_inference_log).
_Requests = list[tuple[str, dict[str, np.ndarray]]]
# Told every (signature, inputs) a warmup ran, e.g. to run them again at other batch sizes.
Seen = Callable[[str, dict[str, np.ndarray]], None]


def _ignore(signature: str, inputs: dict[str, np.ndarray]) -> None:
    return None


class _Runnable(Protocol):
    @property
    def signatures(self) -> Mapping[str, Signature]: ...

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def replay(servable: _Runnable, version_dir: Path, iterations: int, seen: Seen = _ignore) -> int:
    """Run each warmup record `max(iterations, 1)` times; return the number of records.
    `seen` is told each (signature, inputs) run, once.

    No warmup file -> 0. More than MAX_WARMUP_RECORDS records, an unparsable record, an
    unsupported log type (UNIMPLEMENTED) or a failing request -> LoadError.
    """
    path = version_dir / WARMUP_FILE
    if not path.is_file():
        return 0
    start = time.monotonic()
    records = [_requests(log, path) for log in _read_logs(path)]
    for index, requests in enumerate(records):
        for _ in range(max(iterations, 1)):
            for signature, inputs in requests:
                _run(servable, signature, inputs, f"warmup record {index} at {path}")
        for signature, inputs in requests:
            seen(signature, inputs)
    logger.info(
        "Finished warmup of %s: %d records in %.3f s",
        version_dir,
        len(records),
        time.monotonic() - start,
    )
    return len(records)


def _read_logs(path: Path) -> list[Any]:
    logs = []
    try:
        # TF's record iterator, not tf.data: building a dataset pipeline costs ~40 ms of CPU per
        # load, which competes with serving during a hot swap (measured by bench_swap).
        for record in tf.compat.v1.io.tf_record_iterator(str(path)):
            logs.append(prediction_log_pb2.PredictionLog.FromString(record))
            if len(logs) > MAX_WARMUP_RECORDS:
                break
    except tf.errors.OpError as exc:
        raise errors.LoadError(
            f"Failed to read warmup file {path}: {exc.message}", errors.Code.DATA_LOSS
        ) from None
    except DecodeError as exc:
        raise errors.LoadError(
            f"Failed to parse warmup record {len(logs)} at {path}: {exc}", errors.Code.DATA_LOSS
        ) from None
    if len(logs) > MAX_WARMUP_RECORDS:
        raise errors.LoadError(
            f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
            errors.Code.INVALID_ARGUMENT,
        )
    return logs


def _requests(log: Any, path: Path) -> _Requests:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        request = log.predict_log.request
        try:
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        except (TypeError, ValueError) as exc:
            raise errors.LoadError(
                f"Bad tensor in warmup request at {path}: {exc}", errors.Code.INVALID_ARGUMENT
            ) from None
        return [(_signature_name(request), inputs)]
    if kind in ("classify_log", "regress_log"):
        request = getattr(log, kind).request
        return [(_signature_name(request), {"inputs": _examples(request.input, path)})]
    if kind == "multi_inference_log":
        request = log.multi_inference_log.request
        examples = _examples(request.input, path)
        return [(_signature_name(task), {"inputs": examples}) for task in request.tasks]
    if kind in ("predict_streamed_log", "session_run_log"):
        raise errors.LoadError(
            f"Unsupported log_type for warmup: {kind} at {path}", errors.Code.UNIMPLEMENTED
        )
    raise errors.LoadError(
        f"Warmup record without a log_type at {path}", errors.Code.INVALID_ARGUMENT
    )


def _signature_name(request: Any) -> str:
    return str(request.model_spec.signature_name) or DEFAULT_SIGNATURE


def _examples(request_input: Any, path: Path) -> np.ndarray:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return examples_mod.serialize(None, request_input.example_list.examples)
    if kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        return examples_mod.serialize(with_context.context, with_context.examples)
    raise errors.LoadError(
        f"Warmup request has an empty input at {path}", errors.Code.INVALID_ARGUMENT
    )


def _run(servable: _Runnable, signature: str, inputs: dict[str, np.ndarray], what: str) -> None:
    try:
        servable.run(signature, inputs)
    except errors.HotserveError as exc:
        raise errors.LoadError(f"Failed {what}: {exc.message}", exc.code) from None
    pacing.pace()  # each warmup call is one unit of a paced load


def run_synthetic(servable: _Runnable, seen: Seen = _ignore) -> int:
    """Run every signature that has inputs once on a generated 1-row batch; return how many.

    Inputs are zeros (b"" for strings), -1 dims become 1, unknown rank becomes [1]. Skipped:
    signatures without inputs; classify/regress-style ones (an input named "inputs", usually
    serialized tf.Examples, for which no content valid for the model's parser can be made);
    stateful ones (a ref-typed output such as DT_FLOAT_REF: running them could change the
    model's state). Any failure raises LoadError.
    """
    count = 0
    for name, signature in servable.signatures.items():
        inputs = synthetic_inputs(signature)
        if inputs is None:
            continue
        _run(servable, name, inputs, f"synthetic warmup of signature {name}")
        seen(name, inputs)
        count += 1
    return count


def tile_rows(inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray] | None:
    """`inputs` with `rows` rows on axis 0, repeating their own rows in order; None when they
    have no common batch dimension (a scalar, differing row counts, no rows)."""
    counts = {a.shape[0] if a.ndim else 0 for a in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        return None
    (n,) = counts
    index = np.arange(rows) % n
    return {alias: np.take(a, index, axis=0) for alias, a in inputs.items()}


def run_batch_sizes(
    servable: _Runnable,
    samples: Iterable[tuple[str, dict[str, np.ndarray]]],
    sizes: Sequence[int],
    while_idle: Sequence[int] = (),
) -> int:
    """Run every sample (inputs a warmup ran) once at each row count of `sizes` it was not run
    at, its rows repeated (`tile_rows`), then at each of `while_idle` until requests are in
    flight (`pacing.busy`: the sizes a load under traffic skips, app.core.batch_usage); return
    the number of sizes now warm. A size the model refuses is skipped with a log line, not a
    load failure (TF Serving does not warm batch sizes at all; real batches of that size would
    fail the same way)."""
    ran: set[int] = set()
    for signature, inputs in samples:
        own = {a.shape[0] for a in inputs.values() if a.ndim}
        for rows in (*sizes, *while_idle):
            if rows in own:  # the warmup itself ran this size
                ran.add(rows)
                continue
            if rows not in sizes and pacing.busy():
                logger.info(
                    "batch-size warmup of %s stops at %d rows while requests are in flight",
                    signature,
                    rows,
                )
                break
            tiled = tile_rows(inputs, rows)
            if tiled is None:
                break
            try:
                servable.run(signature, tiled)
            except errors.HotserveError as exc:
                logger.info(
                    "batch-size warmup of %s at %d rows skipped: %s", signature, rows, exc.message
                )
                break
            ran.add(rows)
            pacing.pace()
    return len(ran)


def synthetic_inputs(signature: Signature) -> dict[str, np.ndarray] | None:
    """Generated inputs for `signature`, or None when it cannot (or need not) be warmed up."""
    specs = signature.inputs.values()
    if (
        not specs
        or "inputs" in signature.inputs
        or any(o.dtype.endswith("_REF") for o in signature.outputs.values())
    ):
        return None
    inputs = {}
    for spec in specs:
        value = _zeros(spec)
        if value is None:
            return None
        inputs[spec.alias] = value
    return inputs


def _zeros(spec: TensorSpec) -> np.ndarray | None:
    shape = (1,) if spec.shape is None else tuple(1 if d < 0 else d for d in spec.shape)
    if spec.dtype == "DT_STRING":
        return np.full(shape, b"", dtype=object)
    try:
        dtype = tf.dtypes.as_dtype(types_pb2.DataType.Value(spec.dtype)).base_dtype
        return np.zeros(shape, dtype=dtype.as_numpy_dtype)
    except (TypeError, ValueError):
        return None
