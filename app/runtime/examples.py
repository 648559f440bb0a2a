"""tf.Example serialization: the one place hotserve builds what a classify/regress signature
reads (its "inputs" tensor of serialized tf.Example protos).

Both the REST edge (features parsed from JSON, via `SavedModelServable.serialize_examples`) and
warmup (ExampleList / ExampleListWithContext protos from PredictionLog records) end in
`serialize`. A context is merged the way TF Serving's input_util.cc does it: its serialized
bytes are prepended to each example's, so the example's own features win (proto merge).

Pure CPU work without shared state: any thread may call it (routes run large batches in a
worker thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2

from app import errors
from app.core.servable import Example


def serialize(context: Any | None, examples: Sequence[Any]) -> np.ndarray:
    """A `[len(examples)]` object array of serialized tf.Example bytes, `context` (an Example
    proto or None) merged into each."""
    prefix = context.SerializeToString() if context is not None else b""
    out = np.empty(len(examples), dtype=object)
    out[:] = [prefix + example.SerializeToString() for example in examples]
    return out


def from_features(features: Example) -> Any:
    """A tf.Example proto from parsed features (name -> (kind, values)). Raises InvalidArgument
    for a value its list refuses (e.g. an int64 out of range)."""
    example = example_pb2.Example()
    feature_map = example.features.feature
    try:
        for name, (kind, values) in features.items():
            _fill(feature_map[name], name, kind, values)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidArgument(f"Invalid feature value: {exc}") from None
    return example


def _fill(feature: Any, name: str, kind: str, values: Iterable[Any]) -> None:
    if kind == "float":
        feature.float_list.value.extend(values)
    elif kind == "int64":
        feature.int64_list.value.extend(values)
    elif kind == "bytes":
        feature.bytes_list.value.extend(values)
    else:
        raise errors.InvalidArgument(f"Feature: {name} has unknown kind: {kind}")
