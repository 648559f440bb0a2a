"""TensorProto <-> numpy against TensorFlow's own make_tensor_proto / make_ndarray."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from app.errors import InvalidArgument, Unimplemented
from app.grpc.tensors import from_numpy, to_numpy

ARRAYS = [
    np.array([[1.5, -2.0], [3.25, 4.0]], np.float32),
    np.array([1e300, -0.0], np.float64),
    np.array([[1, -2, 3]], np.int32),
    np.array([-(2**63), 2**63 - 1], np.int64),
    np.array([0, 255], np.uint8),
    np.array([-128, 127], np.int8),
    np.array([-3, 7], np.int16),
    np.array([65535, 1], np.uint16),
    np.array([2**32 - 1], np.uint32),
    np.array([2**64 - 1], np.uint64),
    np.array([True, False]),
    np.array([0.5, -1.25, 65504.0], np.float16),
    np.array([1 + 2j, -3j], np.complex64),
    np.array([1 + 2j], np.complex128),
    np.float32(7.0),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: str(np.asarray(a).dtype))
def test_round_trip_through_tensorflow(arr: np.ndarray) -> None:
    arr = np.asarray(arr)
    # Clients' encoding (tensor_content for numpy arrays) decodes to the same array...
    got = to_numpy("x", tf.make_tensor_proto(arr))
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    # ...and hotserve's typed-field answer reads back with TensorFlow's own reader.
    proto = tensor_pb2.TensorProto()
    from_numpy(arr, proto)
    assert not proto.tensor_content
    np.testing.assert_array_equal(tf.make_ndarray(proto), arr)


def test_strings() -> None:
    arr = np.array([[b"a", b"\xff\x00"], [b"", b"zz"]], dtype=object)
    got = to_numpy("s", tf.make_tensor_proto(arr))
    assert got.dtype == object and got.tolist() == arr.tolist()
    proto = tensor_pb2.TensorProto()
    from_numpy(arr, proto)
    assert tf.make_ndarray(proto).tolist() == arr.tolist()


def test_half_val_holds_fp16_bits() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF)
    proto.tensor_shape.dim.add().size = 2
    proto.half_val.extend(np.array([1.5, -2.0], np.float16).view(np.uint16).tolist())
    assert to_numpy("h", proto).tolist() == [1.5, -2.0]


def test_short_forms_fill_like_tensorflow() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[4, 5])
    for size in (2, 2):
        proto.tensor_shape.dim.add().size = size
    assert to_numpy("i", proto).tolist() == [[4, 5], [5, 5]]
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    empty.tensor_shape.dim.add().size = 3
    assert to_numpy("f", empty).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "proto",
    [
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0]),  # 2 values, scalar
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 3),
        tensor_pb2.TensorProto(dtype=types_pb2.DT_INVALID),
    ],
)
def test_inconsistent_protos_are_tensor_parsing_errors(proto: tensor_pb2.TensorProto) -> None:
    with pytest.raises(InvalidArgument, match=r"^tensor parsing error: x$"):
        to_numpy("x", proto)


def test_unsupported_dtype() -> None:
    with pytest.raises(Unimplemented):
        to_numpy("q", tensor_pb2.TensorProto(dtype=types_pb2.DT_QINT8))


@pytest.mark.parametrize(
    "dims",
    [[2**40, 2**40], [2**62, 4], [2**63 - 1, 2]],
    ids=["2^80", "2^64-wraps-to-0", "past-int64"],
)
def test_shapes_past_int64_are_tensor_parsing_errors(dims: list[int]) -> None:
    """TF's TensorShape rejects a shape whose element count overflows int64; the count must
    not wrap around (2^62 * 4 is 0 in int64) into an allocation or a numpy error."""
    for values in ([], [1.0]):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
        for size in dims:
            proto.tensor_shape.dim.add().size = size
        with pytest.raises(InvalidArgument, match=r"^tensor parsing error: x$"):
            to_numpy("x", proto)


@pytest.mark.parametrize(
    ("dtype", "dims"),
    [
        (types_pb2.DT_FLOAT, [10**9]),
        (types_pb2.DT_FLOAT, [2**31, 2**31]),
        (types_pb2.DT_STRING, [2**28 + 1]),
        (types_pb2.DT_DOUBLE, [2**40]),
    ],
    ids=["1e9-float", "2^62-float", "2^28-strings", "2^40-double"],
)
def test_short_forms_cannot_expand_past_a_message(dtype: int, dims: list[int]) -> None:
    """A 40-byte proto whose shape claims 10^9 elements must not allocate gigabytes (or hit
    numpy's "array is too big" as an INTERNAL): no tensor decodes to more than the 2 GiB a
    gRPC message may carry."""
    for values in ({}, {"string_val": [b"a"]} if dtype == types_pb2.DT_STRING else {}):
        proto = tensor_pb2.TensorProto(dtype=dtype, **values)
        for size in dims:
            proto.tensor_shape.dim.add().size = size
        with pytest.raises(InvalidArgument, match=r"^tensor parsing error: x: .* 2 GiB"):
            to_numpy("x", proto)
    one = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    one.tensor_shape.dim.add().size = 10**9
    with pytest.raises(InvalidArgument, match=r"2 GiB"):
        to_numpy("x", one)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.complex64, np.int64])
def test_outputs_longer_than_one_encode_slice(dtype: Any) -> None:
    """from_numpy writes big outputs in slices; every value lands once, in order."""
    arr = (np.arange(3 * 64 * 1024 + 5) % 1000).astype(dtype).reshape(-1, 1)
    proto = tensor_pb2.TensorProto()
    from_numpy(arr, proto)
    np.testing.assert_array_equal(tf.make_ndarray(proto), arr)
