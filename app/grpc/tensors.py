"""TensorProto <-> numpy, as TensorFlow's Tensor::FromProto / AsProtoField do.

Decoding accepts every encoding clients send: `tensor_content` (what `tf.make_tensor_proto`
writes for numpy arrays), the typed `*_val` fields (float_val, int_val, half_val holding fp16
bits, string_val, ...), scalars (no dims), and TF's short forms: fewer values than the shape
holds repeat the last value, none at all means zeros. Anything else is TF's INVALID_ARGUMENT
"tensor parsing error: <alias>". DT_STRING becomes a numpy object array of bytes (core's
convention).

Encoding writes the typed fields, as TF Serving's Predict does by default
(PredictResponseTensorSerializationOption::kAsProtoField); `tf.make_ndarray` reads either.

Pure functions over protobuf messages; any thread may call them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from app.errors import InvalidArgument, Unimplemented

Array = np.ndarray[Any, Any]

# TF DataType enum -> (numpy dtype, typed field of TensorProto)
_CODECS: dict[int, tuple[np.dtype[Any], str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_COMPLEX64: (np.dtype(np.complex64), "scomplex_val"),
    types_pb2.DT_COMPLEX128: (np.dtype(np.complex128), "dcomplex_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_ENUMS: dict[np.dtype[Any], int] = {dt: enum for enum, (dt, _) in _CODECS.items()}
_ENUMS[np.dtype(np.float16)] = types_pb2.DT_HALF
_INT64_MAX = 2**63 - 1
# No tensor decodes to more bytes than the largest message hotserve accepts (gRPC's receive
# limit, lifted to 2^31-1 as TF Serving does): short forms may not expand past what could be
# sent explicitly. (Strings count their 8-byte object pointers.)
MAX_TENSOR_BYTES = 2**31 - 1
_ENCODE_SLICE = 64 * 1024
_KNOWN = frozenset(v.number for v in types_pb2.DataType.DESCRIPTOR.values)


def to_numpy(alias: str, proto: Any) -> Array:
    """One request TensorProto as a numpy array. Raises InvalidArgument (TF's "tensor parsing
    error") for inconsistent protos, Unimplemented for dtypes hotserve cannot hold (bfloat16,
    quantized, resource, variant)."""
    codec = _CODECS.get(proto.dtype)
    if codec is None:
        if proto.dtype not in _KNOWN or proto.dtype == types_pb2.DT_INVALID:
            raise InvalidArgument(f"tensor parsing error: {alias}")
        name = types_pb2.DataType.Name(proto.dtype)
        raise Unimplemented(f"{name} tensors are not supported (input {alias})")
    dtype, field = codec
    shape_proto = proto.tensor_shape
    if shape_proto.unknown_rank or any(d.size < 0 for d in shape_proto.dim):
        raise InvalidArgument(f"tensor parsing error: {alias}")
    shape = tuple(d.size for d in shape_proto.dim)
    # Python ints: np.prod in int64 wraps (2^62 * 4 == 0). TF's TensorShape refuses a shape
    # whose element count overflows int64 (tensor_shape.cc, MultiplyWithoutOverflow).
    count = math.prod(shape)
    if count > _INT64_MAX:
        raise InvalidArgument(f"tensor parsing error: {alias}")
    if count * dtype.itemsize > MAX_TENSOR_BYTES:
        # TF would allocate whatever the shape claims; a few bytes of short form could then
        # cost gigabytes here (and many more as Python objects when encoding the answer).
        raise InvalidArgument(
            f"tensor parsing error: {alias}: {count} {dtype.name} elements exceed the 2 GiB "
            "a gRPC message can carry"
        )
    content = proto.tensor_content  # read once: each read of a bytes field is a fresh copy
    if content and dtype.kind != "O":
        if len(content) != count * dtype.itemsize:
            raise InvalidArgument(f"tensor parsing error: {alias}")
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    values = _values(proto, dtype, field)
    n = len(values)
    if n > count:
        raise InvalidArgument(f"tensor parsing error: {alias}")
    if n == count:
        return values.reshape(shape)
    if n == 0:
        return np.full(shape, b"", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
    out = np.empty(count, dtype=dtype)
    out[:n] = values
    out[n:] = values[-1]  # TF repeats the last value to fill the shape
    return out.reshape(shape)


def decoded_bytes(proto: Any) -> int:
    """About how many bytes `to_numpy(proto)` makes (the shape's element count times the item
    size; 0 for shapes it will refuse): cheap, to decide whether decoding leaves the loop."""
    codec = _CODECS.get(proto.dtype)
    dims: list[int] = [d.size for d in proto.tensor_shape.dim]
    if codec is None or any(d < 0 for d in dims):
        return 0
    return math.prod(dims) * int(codec[0].itemsize)


def _values(proto: Any, dtype: np.dtype[Any], field: str) -> Array:
    raw = getattr(proto, field)
    if dtype.kind == "O":
        arr = np.empty(len(raw), dtype=object)
        arr[:] = list(raw)
        return arr
    if field == "half_val":
        return np.asarray(raw, dtype=np.uint16).view(np.float16)
    if dtype.kind == "c":
        pairs = np.asarray(raw, dtype=np.float32 if dtype.itemsize == 8 else np.float64)
        if pairs.size % 2:
            pairs = pairs[:-1]
        return pairs.view(dtype)
    return np.asarray(raw, dtype=dtype)


def from_numpy(arr: Array, proto: Any) -> None:
    """Fill `proto` (an empty TensorProto) from an output array: dtype, shape, typed values."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "SU":
        arr = arr.astype(object)
    enum = _ENUMS.get(arr.dtype)
    if enum is None:
        raise Unimplemented(f"outputs of dtype {arr.dtype} cannot be sent")
    proto.dtype = enum
    dims = proto.tensor_shape.dim
    for size in arr.shape:
        dims.add().size = size
    field = _CODECS[enum][1]
    flat = arr.ravel()
    if arr.dtype.kind == "O":
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return
    if field == "half_val":
        flat = flat.view(np.uint16)
    elif arr.dtype.kind == "c":
        flat = flat.view(flat.real.dtype)
    out = getattr(proto, field)
    # In slices: one tolist() of 10^8 values is gigabytes of Python floats and one long C call
    # holding the GIL; slices keep both small (the field itself stores packed scalars).
    for start in range(0, flat.size, _ENCODE_SLICE):
        out.extend(flat[start : start + _ENCODE_SLICE].tolist())


def new_tensor() -> Any:
    return tensor_pb2.TensorProto()
