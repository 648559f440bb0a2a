"""TF Serving's REST dialect (spec sections 3 and 6) as pure functions: parsed JSON ->
numpy tensors (predict) or tf.Example features (classify/regress), plus the signature checks of
classify/regress. JSON text itself (`parse_body`, the `encode_*` functions) lives in
`app.api.jsonfmt` and is re-exported here, so routes need only this module. No I/O and no shared
state: any thread may call these functions.

Messages and status codes follow TF Serving's `util/json_tensor.cc`; `{"b64": ...}` values are
decoded with absl's rules (`app.api.unescape`). Deviations (besides those listed in
`app.api.jsonfmt`): a feature given as `[]` becomes an empty float list (TF leaves its kind
unset).

Performance: the common request (instances of numeric lists) is converted with numpy (one call,
or one per block of 512 rows for long lists, so a worker thread converting a large request
gives the GIL back between blocks); the per-element walk runs only when numpy cannot build a
regular array of the right kind, and it is what produces TF's exact error messages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.api.jsonfmt import (
    FLOAT32_MAX,
    INT64_MAX,
    INT64_MIN,
    NUMERIC,
    NUMPY_DTYPES,
    UINT64_MAX,
    Array,
    JsonObject,
    encode_classify,
    encode_error,
    encode_json,
    encode_predict,
    encode_regress,
    json_repr,
    json_type,
    may_hold_bools,
    parse_body,
    shape_text,
    tf_type_name,
)
from app.api.unescape import base64_unescape
from app.core.servable import Example, Feature
from app.core.types import Signature, TensorSpec
from app.errors import HotserveError, InvalidArgument, Unimplemented

__all__ = ["JsonObject", "PredictRequest", "encode_classify", "encode_error"]
__all__ += ["encode_json", "encode_predict", "encode_regress", "parse_body", "parse_examples"]
__all__ += ["parse_predict", "to_tensors"]

INT32_MIN, INT32_MAX, UINT32_MAX = -(2**31), 2**31 - 1, 2**32 - 1
_MAX_RANK = 64  # numpy's limit (TF allows 254; nobody sends such JSON)
_DEFAULT_SIGNATURE = "serving_default"


def _signature_name(obj: dict[str, Any]) -> str:
    raw = obj.get("signature_name", "")
    if not isinstance(raw, str):
        raise InvalidArgument(
            f"JSON Value: {json_repr(obj)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return raw


# ---------------------------------------------------------------------------- predict request


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A predict body, split up. `payload` is the value of `instances` (row) or `inputs`
    (columnar). `maybe_bools` False means the body has no true/false token, so numpy's dtype
    inference cannot have hidden a bool among numbers. `error` holds a structural problem of the
    body that TF reports only after the signature checks (spec 2.7); `to_tensors` raises it."""

    signature_name: str
    columnar: bool
    payload: Any
    raw_signature_name: str = ""
    maybe_bools: bool = True
    error: InvalidArgument | None = None


def parse_predict(obj: dict[str, Any]) -> PredictRequest:
    """Reads `signature_name` ("" or absent -> serving_default) and the payload. Raises
    InvalidArgument only for a non-string signature_name; other problems are deferred."""
    raw = _signature_name(obj)
    has_rows, has_columns = "instances" in obj, "inputs" in obj
    payload = obj.get("instances") if has_rows else obj.get("inputs")
    error = None
    if has_rows and has_columns:
        error = InvalidArgument(
            f"JSON Value: {json_repr(obj)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    elif has_rows and not isinstance(payload, list):
        error = InvalidArgument(
            f"JSON Value: {json_repr(obj)} Expecting 'instances' to be an list/array"
        )
    elif has_rows and not payload:
        error = InvalidArgument(f"JSON Value: {json_repr(obj)} No values in 'instances' array")
    elif not has_rows and not has_columns:
        error = InvalidArgument("Missing 'inputs' or 'instances' key")
    return PredictRequest(
        signature_name=raw or _DEFAULT_SIGNATURE,
        columnar=not has_rows,
        payload=payload,
        raw_signature_name=raw,
        maybe_bools=may_hold_bools(obj.raw) if isinstance(obj, JsonObject) else True,
        error=error,
    )


def to_tensors(req: PredictRequest, sig: Signature) -> dict[str, Array]:
    """One numpy array per signature input (DT_STRING as object arrays of bytes), per spec 3.2-3.5.
    Raises InvalidArgument (or Unimplemented for an unsupported dtype in the columnar format)."""
    if not sig.inputs:
        raise InvalidArgument(
            f"Failed to get input map for signature: {req.raw_signature_name or 'DEFAULT'}"
        )
    if req.error is not None:
        raise req.error
    if req.columnar:
        return _columnar(req.payload, sig.inputs, req.maybe_bools)
    return _rows(req.payload, sig.inputs, req.maybe_bools)


def _columnar(payload: Any, specs: Mapping[str, TensorSpec], bools: bool) -> dict[str, Array]:
    if not isinstance(payload, dict) or _is_b64(payload):
        if len(specs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, spec),) = specs.items()
        return {name: _tensor(payload, spec.dtype, bools)}
    out: dict[str, Array] = {}
    for name in sorted(specs):  # extra keys are ignored (QUIRK, kept)
        if name not in payload:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = _tensor(payload[name], specs[name].dtype, bools)
    return out


def _rows(instances: list[Any], specs: Mapping[str, TensorSpec], bools: bool) -> dict[str, Array]:
    first = instances[0]
    if not isinstance(first, dict) and len(specs) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    if _is_element_object(first):
        if "b64" not in specs and all(
            type(e) is dict and e.keys() == specs.keys() for e in instances
        ):
            out: dict[str, Array] = {}
            for n, spec in specs.items():
                arr = _fast([e[n] for e in instances], spec.dtype, bools)
                if arr is None:
                    break
                out[n] = arr
            else:
                return out
        return _named_rows_slow(instances, specs)
    name = min(specs)  # TF takes the first entry of its map
    arr = _fast(instances, specs[name].dtype, bools)
    if arr is not None:
        return {name: arr}
    return _plain_rows_slow(instances, name, specs[name].dtype)


class _RowBatch:
    """Per-input values of the instances seen so far, checked against the first instance."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[int, list[int]]] = {}
        self.values: dict[str, list[Any]] = {}
        self.dtypes: dict[str, str] = {}

    def add(self, name: str, item: Any, dtype: str) -> None:
        shape = _dense_shape(item)
        values: list[Any] = []
        _fill(item, 0, shape, _converter(dtype), values)
        if name not in self.first:
            self.first[name] = (len(values), shape)
            self.values[name], self.dtypes[name] = values, dtype
            return
        size, first_shape = self.first[name]
        if size != len(values):
            raise InvalidArgument(f"Expecting tensor size: {size} but got: {len(values)}")
        if shape != first_shape:
            raise InvalidArgument(
                f"Expecting shape {shape_text(first_shape)} but got: {shape_text(shape)}"
            )
        self.values[name].extend(values)

    def arrays(self, count: int) -> dict[str, Array]:
        return {
            name: _build(values, [count, *self.first[name][1]], self.dtypes[name])
            for name, values in self.values.items()
        }


def _plain_rows_slow(instances: list[Any], name: str, dtype: str) -> dict[str, Array]:
    batch = _RowBatch()
    for i, elem in enumerate(instances):
        if _is_element_object(elem):
            raise InvalidArgument(f"Expecting value/list but got object at item {i} of input list")
        try:
            batch.add(name, elem, dtype)
        except HotserveError as exc:
            raise InvalidArgument(
                f"Failed to process element: {i} of 'instances' list. "
                f"Error: {exc.code}: {exc.message}"
            ) from None
    return batch.arrays(len(instances))


def _named_rows_slow(instances: list[Any], specs: Mapping[str, TensorSpec]) -> dict[str, Array]:
    batch = _RowBatch()
    expected = ",".join(sorted(specs))
    for i, elem in enumerate(instances):
        if not _is_element_object(elem):
            raise InvalidArgument(f"Expecting object but got list at item {i} of input list")
        for key, value in elem.items():
            try:
                if key not in specs:
                    raise InvalidArgument(f"JSON object: does not have named input: {key}")
                batch.add(key, value, specs[key].dtype)
            except HotserveError as exc:
                raise InvalidArgument(
                    f"Failed to process element: {i} key: {key} of 'instances' list. "
                    f"Error: {exc.code}: {exc.message}"
                ) from None
        if elem.keys() != specs.keys():
            raise InvalidArgument(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{json_repr(elem)} keys must be equal to: {expected}"
            )
    return batch.arrays(len(instances))


def _tensor(value: Any, dtype: str, bools: bool) -> Array:
    arr = _fast(value, dtype, bools)
    if arr is not None:
        return arr
    shape = _dense_shape(value)
    values: list[Any] = []
    _fill(value, 0, shape, _converter(dtype), values)
    return _build(values, shape, dtype)


# ---------------------------------------------------------------------------- conversion

# JSON integers a dtype accepts (TF: int32 for the small types, then a C cast, which wraps).
_INT_RANGES = {
    "DT_INT32": (INT32_MIN, INT32_MAX),
    "DT_INT16": (INT32_MIN, INT32_MAX),
    "DT_INT8": (INT32_MIN, INT32_MAX),
    "DT_UINT8": (INT32_MIN, INT32_MAX),
    "DT_INT64": (INT64_MIN, INT64_MAX),
    "DT_UINT32": (0, UINT32_MAX),
    "DT_UINT64": (0, UINT64_MAX),
}


def _fast(value: Any, dtype: str, bools: bool) -> Array | None:
    """One numpy call; None whenever the value needs the per-element walk (wrong JSON types,
    raggedness, ints out of range), which then produces TF's message."""
    if dtype not in NUMERIC:
        return None
    target = NUMPY_DTYPES[dtype]
    try:
        arr = _asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    kind = arr.dtype.kind
    if dtype == "DT_BOOL" or kind == "b":
        return arr if kind == "b" and dtype == "DT_BOOL" else None
    if kind not in "iuf" or (kind == "f" and dtype in _INT_RANGES and arr.size):
        return None
    if bools and arr.size and ((arr == 0) | (arr == 1)).any() and _has_bool(value, arr.ndim):
        return None  # numpy turned a true/false among numbers into 1/0
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if arr.size and (int(arr.min()) < low or int(arr.max()) > high):
            return None
        return arr.astype(target)
    if kind != "f":  # int -> double -> float, as rapidjson's GetFloat; cannot overflow
        return arr.astype(np.float64).astype(target, copy=False)
    if dtype == "DT_DOUBLE":
        return arr
    with np.errstate(over="ignore"):  # out-of-range doubles become +-inf for float (spec 3.5)
        return arr.astype(target)


_BLOCK_ROWS = 512


def _asarray(value: Any) -> Array:
    """`np.asarray(value)`, built from blocks of rows when `value` is a long list: one numpy call
    holds the GIL for its whole run (~0.2 s for 3M floats), so a thread converting a large
    request would stall the event loop that long. Any block that disagrees in dtype or row
    shape sends the whole list to one call, so the result is always what numpy gives for it."""
    if type(value) is not list or len(value) < 4 * _BLOCK_ROWS:
        return np.asarray(value)
    first = np.asarray(value[:_BLOCK_ROWS])
    blocks = [first]
    for i in range(_BLOCK_ROWS, len(value), _BLOCK_ROWS):
        block = np.asarray(value[i : i + _BLOCK_ROWS])
        if block.dtype != first.dtype or block.shape[1:] != first.shape[1:]:
            return np.asarray(value)
        blocks.append(block)
    return np.concatenate(blocks)


def _has_bool(value: Any, depth: int) -> bool:
    leaves: Any = [value]
    for _ in range(depth):
        leaves = itertools.chain.from_iterable(leaves)
    return any(type(leaf) is bool for leaf in leaves)


def _dense_shape(value: Any) -> list[int]:
    shape: list[int] = []
    while type(value) is list:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    if len(shape) > _MAX_RANK:
        raise InvalidArgument(f"JSON Value nested too deeply: rank {len(shape)} > {_MAX_RANK}")
    return shape


def _fill(
    value: Any, level: int, shape: list[int], convert: Callable[[Any], Any], out: list[Any]
) -> None:
    """TF's FillTensorProto: leaves must sit at depth == rank, lists must match the shape."""
    rank = len(shape)
    if type(value) is not list:
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {json_repr(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        out.append(convert(value))
        return
    if level >= rank:
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, convert, out)


def _converter(dtype: str) -> Callable[[Any], Any]:
    check = _LEAF_CHECKS.get(dtype)

    def convert(value: Any) -> Any:
        if type(value) is dict:
            if dtype == "DT_STRING":
                return _b64_decode(value)
            raise _type_error(value, dtype)
        if check is None:
            raise Unimplemented(
                f"Conversion of JSON Value: {json_repr(value)} to type: {tf_type_name(dtype)}"
            )
        if not check(value):
            raise _type_error(value, dtype)
        return _utf8(value) if dtype == "DT_STRING" else value

    return convert


def _int_check(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


_LEAF_CHECKS: dict[str, Callable[[Any], bool]] = {
    "DT_FLOAT": lambda v: type(v) is float or type(v) is int,
    "DT_DOUBLE": lambda v: type(v) is float or type(v) is int,
    "DT_BOOL": lambda v: type(v) is bool,
    "DT_STRING": lambda v: type(v) is str,
    **{name: _int_check(low, high) for name, (low, high) in _INT_RANGES.items()},
}


def _build(values: list[Any], shape: list[int], dtype: str) -> Array:
    if dtype == "DT_STRING":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    elif dtype in ("DT_FLOAT", "DT_DOUBLE"):
        with np.errstate(over="ignore"):
            arr = np.array([float(v) for v in values], dtype=np.float64)
            arr = arr.astype(NUMPY_DTYPES[dtype])
    elif dtype in _INT_RANGES:
        wide = np.uint64 if dtype == "DT_UINT64" else np.int64
        arr = np.array(values, dtype=wide).astype(NUMPY_DTYPES[dtype])
    elif dtype == "DT_BOOL":
        arr = np.array(values, dtype=np.bool_)
    else:  # no leaves at all, so TF never noticed the unsupported dtype
        arr = np.empty(0, dtype=NUMPY_DTYPES.get(dtype, np.dtype(np.float32)))
    return arr.reshape(shape)


def _type_error(value: Any, dtype: str) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {json_repr(value)} Type: {json_type(value)} "
        f"is not of expected type: {tf_type_name(dtype)}"
    )


def _is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def _is_element_object(value: Any) -> bool:
    return type(value) is dict and not _is_b64(value)


def _b64_decode(value: dict[str, Any]) -> bytes:
    if not _is_b64(value):
        raise InvalidArgument(
            f"JSON Value: {json_repr(value)} not formatted correctly for base64 data"
        )
    decoded = base64_unescape(value["b64"])  # absl's rules, not Python's (see app.api.unescape)
    if decoded is None:
        raise InvalidArgument("Unable to base64 decode")
    return decoded


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # raw non-UTF-8 bytes of the body, or an escaped lone surrogate
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------- classify/regress


def parse_examples(
    obj: dict[str, Any], method: Literal["classify", "regress"]
) -> tuple[str, Example | None, list[Example]]:
    """(signature_name, context, examples) of a classify/regress body (spec 6.1). TF's message
    for a missing `examples` says "classify" for both methods (kept); `method` is informative."""
    del method  # same wording for both methods, as in TF Serving
    name = _signature_name(obj) or _DEFAULT_SIGNATURE
    context = _example(obj["context"]) if "context" in obj else None
    if "examples" not in obj:
        raise InvalidArgument(
            f"JSON Value: {json_repr(obj)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = obj["examples"]
    if not isinstance(examples, list):
        raise InvalidArgument(
            f"JSON Value: {json_repr(obj)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise InvalidArgument(f"JSON Value: {json_repr(obj)} 'examples' value is an empty array")
    return name, context, [_example(e) for e in examples]


def _example(value: Any) -> Example:
    if type(value) is not dict:
        raise InvalidArgument(f"Example must be JSON object but got JSON {json_type(value)}")
    example: Example = {}
    for name, content in value.items():
        kind = ""
        values: list[Any] = []
        for item in content if type(content) is list else [content]:
            kind = _feature_kind(name, item, kind)
            values.append(_feature_value(name, item))
        feature: Feature = (kind or "float", values)
        example[name] = feature
    return example


def _feature_kind(name: str, item: Any, current: str) -> str:
    if item is None or type(item) is list or (type(item) is dict and not _is_b64(item)):
        raise InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(item)}"
        )
    if type(item) is dict or type(item) is str:
        kind = "bytes"
    elif type(item) is float or (type(item) is int and not INT64_MIN <= item <= UINT64_MAX):
        kind = "float"
    else:
        kind = "int64"  # ints and true/false
    if current and kind != current:
        raise InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: {current}"
        )
    return kind


def _feature_value(name: str, item: Any) -> Any:
    if type(item) is dict:
        return _b64_decode(item)
    if type(item) is str:
        return _utf8(item)
    if type(item) is bool:
        return int(item)
    if type(item) is int and INT64_MIN <= item <= UINT64_MAX:
        if item > INT64_MAX:
            raise InvalidArgument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        return item
    value = float(item)
    if math.isfinite(value) and abs(value) > FLOAT32_MAX:
        return math.copysign(math.inf, value)  # what a float32 feature stores
    return value
