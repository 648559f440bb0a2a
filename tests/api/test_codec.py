"""The REST codec against TF Serving's JSON dialect (spec sections 2.3, 3 and 6).

Signatures are built by hand; no TensorFlow. Messages are compared exactly where the spec or TF
Serving's json_tensor.cc fixes them.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import orjson
import pytest

from app.api import codec
from app.core.types import Signature, TensorSpec
from app.errors import HotserveError
from app.serving import checks

f32 = np.float32
INT64_MAX, INT64_MIN, UINT64_MAX = 2**63 - 1, -(2**63), 2**64 - 1


def sig(
    inputs: dict[str, str],
    outputs: dict[str, str] | None = None,
    name: str = "serving_default",
    method: str = "tensorflow/serving/predict",
) -> Signature:
    def specs(d: dict[str, str]) -> dict[str, TensorSpec]:
        return {k: TensorSpec(k, v, None, f"{k}:0") for k, v in d.items()}

    return Signature(name, method, specs(inputs), specs(outputs or {"y": "DT_FLOAT"}))


def predict(body: bytes, signature: Signature) -> dict[str, np.ndarray]:
    return codec.to_tensors(codec.parse_predict(codec.parse_body(body)), signature)


def error(fn: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(HotserveError) as info:
        fn(*args)
    return info.value.code, info.value.message


def loads(data: bytes) -> Any:
    return json.loads(data)  # Python's json accepts NaN / Infinity tokens, like TF's clients


# ---------------------------------------------------------------------------- parse_body

SURROGATE = "JSON Parse error: The surrogate pair in string is invalid."
PARSE_ERRORS = [
    (b"", "JSON Parse error: The document is empty"),
    (b"   \n", "JSON Parse error: The document is empty. at offset: 4"),
    (b"x", "JSON Parse error: Invalid value. at offset: 0"),
    (b'{"a":1,}', "JSON Parse error: Missing a name for object member. at offset: 7"),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member."),
    (b'{"a":1 "b":2}', "JSON Parse error: Missing a comma or '}' after an object member."),
    (b'{"a":[1 2]}', "JSON Parse error: Missing a comma or ']' after an array element."),
    (b'{"a":"x', "JSON Parse error: Missing a closing quotation mark in string."),
    (b'{"a":"\\q"}', "JSON Parse error: Invalid escape character in string."),
    (b'{"a":"\\u12G4"}', "JSON Parse error: Incorrect hex digit after \\u escape in string."),
    (b'{"a":"\x01"}', "JSON Parse error: Invalid encoding in string."),
    (b'{"a":1e400}', "JSON Parse error: Number too big to be stored in double."),
    (b'{"a":Inf,"b":x}', "JSON Parse error: Invalid value. at offset: 13"),
    # rapidjson's kParseErrorStringUnicodeSurrogateInvalid, at the escape's backslash; Python's
    # json would take a lone surrogate. The first error in the text wins; after the first
    # value nothing is read.
    (b'{"a":"\\ud800"}', SURROGATE + " at offset: 6"),
    (b'{"a":"\\udc00"}', SURROGATE + " at offset: 6"),
    (b'{"a":"\\ud800\\u0041"}', SURROGATE + " at offset: 6"),
    (b'{"a":"x\\ud800y"}', SURROGATE + " at offset: 7"),
    (b'{"a":"\\\\\\ud800"}', SURROGATE + " at offset: 8"),  # after an escaped backslash
    (b'\xef\xbb\xbf{"a":[NaN,"\\ud800"]}', SURROGATE + " at offset: 14"),
    (b'{"a":"\\ud800"] x', SURROGATE + " at offset: 6"),
    (b'{"a" x "\\ud800"}', "JSON Parse error: Missing a colon after a name of object member."),
    (b"[1,2]", "JSON Value: [\n    1,\n    2\n] Is not object"),
    (b'"s"', 'JSON Value: "s" Is not object'),
    (b"1.5", "JSON Value: 1.5 Is not object"),
    (b"NaN", "JSON Value: NaN Is not object"),
    (b"null", "JSON Value: null Is not object"),
]


@pytest.mark.parametrize(("body", "message"), PARSE_ERRORS)
def test_parse_body_errors(body: bytes, message: str) -> None:
    code, text = error(codec.parse_body, body)
    assert code == "INVALID_ARGUMENT"
    assert text.startswith(message)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"v": NaN}', math.nan),
        (b'{"v": Infinity}', math.inf),
        (b'{"v": -Infinity}', -math.inf),
        (b'{"v": Inf}', math.inf),
        (b'{"v": -Inf}', -math.inf),
        (b'{"v": -NaN}', math.nan),
        (b'{"v": 9223372036854775807}', INT64_MAX),
        (b'{"v": -9223372036854775808}', INT64_MIN),
        (b'{"v": 18446744073709551615}', UINT64_MAX),
        (b'{"v": 9223372036854775807, "n": NaN}', INT64_MAX),
        (b'{"v": 18446744073709551615, "n": Inf}', UINT64_MAX),
        (b'{"v": 18446744073709551616}', 18446744073709551616.0),
        (b'{"v": 18446744073709551616, "n": NaN}', 18446744073709551616.0),
        (b'{"v": 2}', 2),
        (b'{"v": 2.0}', 2.0),
        (b'{"v": "Inf", "n": Inf}', "Inf"),
        (b'{"v": "say \\"NaN\\" -Inf", "n": -Inf}', 'say "NaN" -Inf'),
        (b'{"v": 1, "v": 2}', 2),  # last wins (orjson); documented deviation
        (b'{"v": "\\ud83d\\ude00", "n": NaN}', "\U0001f600"),  # a pair, on the slow path
        (b'{"v": "\\\\ud800", "n": NaN}', "\\ud800"),  # an escaped backslash, then text
        (b'{"v": 1} "\\ud800"', 1),  # after the first value: not read
    ],
)
def test_parse_body_values(body: bytes, expected: Any) -> None:
    value = codec.parse_body(body)["v"]
    assert type(value) is type(expected)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == expected


def test_parse_body_accepts_invalid_utf8_in_strings() -> None:
    obj = codec.parse_body(b'{"inputs": ["a\xffb"]}')
    out = codec.to_tensors(codec.parse_predict(obj), sig({"x": "DT_STRING"}))
    assert out["x"].tolist() == [b"a\xffb"]


def test_parse_body_returns_a_dict() -> None:
    obj = codec.parse_body(b'{"instances": [1]}')
    assert isinstance(obj, dict)
    assert obj == {"instances": [1]}


# ---------------------------------------------------------------------------- parse_predict


@pytest.mark.parametrize(
    ("body", "name", "columnar"),
    [
        (b'{"instances": [1]}', "serving_default", False),
        (b'{"signature_name": "", "instances": [1]}', "serving_default", False),
        (b'{"signature_name": "foo", "inputs": 1}', "foo", True),
        (b'{"signature_name": "a/b c", "inputs": [], "other": 1}', "a/b c", True),
    ],
)
def test_parse_predict(body: bytes, name: str, columnar: bool) -> None:
    req = codec.parse_predict(codec.parse_body(body))
    assert (req.signature_name, req.columnar, req.error) == (name, columnar, None)


@pytest.mark.parametrize("value", [b"5", b'["a"]', b"null", b"{}", b"true"])
def test_signature_name_must_be_a_string(value: bytes) -> None:
    body = b'{"signature_name": ' + value + b', "instances": [1]}'
    code, message = error(codec.parse_predict, codec.parse_body(body))
    assert code == "INVALID_ARGUMENT"
    assert message.startswith('JSON Value: {\n    "signature_name": ')
    assert message.endswith(
        " not formatted correctly. 'signature_name' key must be a string value."
    )


STRUCTURE_ERRORS = [
    (
        b'{"instances": [1], "inputs": [1]}',
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
    ),
    (b'{"signature_name": "x"}', "Missing 'inputs' or 'instances' key"),
    (b'{"instances": {"x": 1}}', "Expecting 'instances' to be an list/array"),
    (b'{"instances": 5}', "Expecting 'instances' to be an list/array"),
    (b'{"instances": []}', "No values in 'instances' array"),
]


@pytest.mark.parametrize(("body", "message"), STRUCTURE_ERRORS)
def test_structure_errors_come_after_signature_checks(body: bytes, message: str) -> None:
    req = codec.parse_predict(codec.parse_body(body))  # deferred (spec 2.7)
    code, text = error(codec.to_tensors, req, sig({"x": "DT_FLOAT"}))
    assert code == "INVALID_ARGUMENT"
    assert message in text
    # A signature without inputs wins over the structure of the body.
    empty = Signature("s", "m", {}, {})
    _, text = error(codec.to_tensors, req, empty)
    assert text.startswith("Failed to get input map for signature: ")


@pytest.mark.parametrize(
    ("body", "label"),
    [(b'{"instances": [1]}', "DEFAULT"), (b'{"signature_name": "s", "inputs": 1}', "s")],
)
def test_signature_without_inputs(body: bytes, label: str) -> None:
    req = codec.parse_predict(codec.parse_body(body))
    assert error(codec.to_tensors, req, Signature("s", "m", {}, {})) == (
        "INVALID_ARGUMENT",
        f"Failed to get input map for signature: {label}",
    )


# ---------------------------------------------------------------------------- to_tensors: values

F, D, I32, I64, S = "DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_INT64", "DT_STRING"

TENSORS = [
    # row format, one input, plain values
    (b'{"instances": [2.0, 3.0, 4.0]}', {"x": F}, {"x": (f32, [3], [2.0, 3.0, 4.0])}),
    (b'{"instances": [1, 2.0, 3, 5.003, 0.0]}', {"x": F}, {"x": (f32, [5], [1, 2, 3, 5.003, 0])}),
    (b'{"instances": [1.0, 2, 0.662]}', {"x": D}, {"x": (np.float64, [3], [1.0, 2.0, 0.662])}),
    (
        b'{"instances": [[1,2],[3,4],[5,6]]}',
        {"x": I32},
        {"x": (np.int32, [3, 2], [1, 2, 3, 4, 5, 6])},
    ),
    (b'{"instances": [[[1.0]], [[2.0]]]}', {"x": F}, {"x": (f32, [2, 1, 1], [1.0, 2.0])}),
    (b'{"instances": [[], []]}', {"x": F}, {"x": (f32, [2, 0], [])}),
    (b'{"instances": [[], []]}', {"x": I32}, {"x": (np.int32, [2, 0], [])}),
    (b'{"instances": [[], []]}', {"x": "DT_BOOL"}, {"x": (np.bool_, [2, 0], [])}),
    (b'{"instances": [[], []]}', {"x": S}, {"x": (object, [2, 0], [])}),
    (
        b'{"instances": [NaN, Infinity, -Infinity, Inf, -Inf]}',
        {"x": F},
        {"x": (f32, [5], [math.nan, math.inf, -math.inf, math.inf, -math.inf])},
    ),
    (b'{"instances": [NaN, 1e300]}', {"x": D}, {"x": (np.float64, [2], [math.nan, 1e300])}),
    (
        b'{"instances": [1e39, -1e39, 1e-50]}',
        {"x": F},
        {"x": (f32, [3], [math.inf, -math.inf, 0.0])},
    ),
    (b'{"instances": [1435774380]}', {"x": F}, {"x": (f32, [1], [1435774336.0])}),
    (
        b'{"instances": [9223372036854775807, -9223372036854775808]}',
        {"x": I64},
        {"x": (np.int64, [2], [INT64_MAX, INT64_MIN])},
    ),
    (
        b'{"instances": [18446744073709551615, 0]}',
        {"x": "DT_UINT64"},
        {"x": (np.uint64, [2], [UINT64_MAX, 0])},
    ),
    (b'{"instances": [4294967295]}', {"x": "DT_UINT32"}, {"x": (np.uint32, [1], [2**32 - 1])}),
    (
        b'{"instances": [2147483647, -2147483648]}',
        {"x": I32},
        {"x": (np.int32, [2], [2**31 - 1, -(2**31)])},
    ),
    # TF checks the int32 range, then C-casts to the narrow type (wraps).
    (b'{"instances": [300, -1, 7]}', {"x": "DT_INT8"}, {"x": (np.int8, [3], [44, -1, 7])}),
    (b'{"instances": [300, -1]}', {"x": "DT_UINT8"}, {"x": (np.uint8, [2], [44, 255])}),
    (b'{"instances": [70000]}', {"x": "DT_INT16"}, {"x": (np.int16, [1], [4464])}),
    (b'{"instances": [true, false]}', {"x": "DT_BOOL"}, {"x": (np.bool_, [2], [True, False])}),
    (
        b'{"instances": [[true], [false]]}',
        {"x": "DT_BOOL"},
        {"x": (np.bool_, [2, 1], [True, False])},
    ),
    (
        b'{"instances": ["a", "\\u00fcn\\u00efc\\u00f6de \\u2603", "tab\\tnl\\n\\u0000"]}',
        {"x": S},
        {"x": (object, [3], [b"a", "ünïcöde ☃".encode(), b"tab\tnl\n\x00"])},
    ),
    (
        b'{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}',
        {"x": S},
        {"x": (object, [2], [b"hello", b"world"])},
    ),
    (
        b'{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ"}]]}',
        {"x": S},
        {"x": (object, [2, 1], [b"hello", b"world"])},
    ),
    (b'{"instances": [{"b64": ""}, "raw"]}', {"x": S}, {"x": (object, [2], [b"", b"raw"])}),
    # row format, named inputs
    (b'{"instances": [{"x": 1.0}, {"x": 2.0}]}', {"x": F}, {"x": (f32, [2], [1.0, 2.0])}),
    (
        b'{"instances": [{"x": [1, 2], "s": "a"}, {"s": "b", "x": [3, 4]}]}',
        {"x": I32, "s": S},
        {"x": (np.int32, [2, 2], [1, 2, 3, 4]), "s": (object, [2], [b"a", b"b"])},
    ),
    (
        b'{"instances": [{"d": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}',
        {"d": S},
        {"d": (object, [1, 2, 1], [b"hello", b"world"])},
    ),
    (
        b'{"instances": [{"a": NaN, "b": [true]}, {"a": 2, "b": [false]}]}',
        {"a": F, "b": "DT_BOOL"},
        {"a": (f32, [2], [math.nan, 2.0]), "b": (np.bool_, [2, 1], [True, False])},
    ),
    # columnar
    (b'{"inputs": 1.0}', {"x": F}, {"x": (f32, [], [1.0])}),
    (b'{"inputs": []}', {"x": F}, {"x": (f32, [0], [])}),
    (b'{"inputs": [2.0, 3.0]}', {"x": F}, {"x": (f32, [2], [2.0, 3.0])}),
    (b'{"inputs": {"b64": "aGVsbG8="}}', {"x": S}, {"x": (object, [], [b"hello"])}),
    (b'{"inputs": "text"}', {"x": S}, {"x": (object, [], [b"text"])}),
    (
        b'{"inputs": {"x": [[[1,2],[3,4],[5,6]]]}}',
        {"x": I32},
        {"x": (np.int32, [1, 3, 2], [1, 2, 3, 4, 5, 6])},
    ),
    (
        b'{"inputs": {"i": [[[1,2]]], "s": ["foo", "bar"], "b": {"b64": "aGVsbG8="}, "extra": 1}}',
        {"i": I32, "s": S, "b": S},
        {
            "i": (np.int32, [1, 1, 2], [1, 2]),
            "s": (object, [2], [b"foo", b"bar"]),
            "b": (object, [], [b"hello"]),
        },
    ),
    (
        b'{"inputs": {"a": [1, 2, 3], "b": [[1.5]]}}',
        {"a": I64, "b": D},
        {"a": (np.int64, [3], [1, 2, 3]), "b": (np.float64, [1, 1], [1.5])},
    ),
]


@pytest.mark.parametrize(("body", "inputs", "expected"), TENSORS)
def test_to_tensors(body: bytes, inputs: dict[str, str], expected: dict[str, Any]) -> None:
    out = predict(body, sig(inputs))
    assert set(out) == set(expected)
    for name, (dtype, shape, values) in expected.items():
        arr = out[name]
        assert arr.dtype == np.dtype(dtype), name
        assert list(arr.shape) == shape, name
        flat = arr.ravel().tolist()
        if arr.dtype.kind == "f":
            np.testing.assert_array_equal(np.array(flat), np.array(values, dtype=arr.dtype))
        else:
            assert flat == values, name


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[0.0, 1.0, 0.5]], "note": "true"}',  # a true token, but in a string
        b'{"instances": [[0.0, 1.0, 0.5]]}',
        b'{"signature_name": "serving_default", "inputs": [[0, 1, 0.5]]}',
    ],
)
def test_zero_and_one_stay_numbers(body: bytes) -> None:
    out = predict(body, sig({"x": F}))
    assert out["x"].tolist() == [[0.0, 1.0, 0.5]]


@pytest.mark.parametrize(
    ("body", "dtype"),
    [
        (b'{"instances": [[0.5, true]]}', F),
        (b'{"instances": [[1, false]]}', I32),
        (b'{"inputs": [0.0, 1.0, false]}', D),
        (b'{"signature_name": "serving_default", "inputs": [0, 1, true]}', I64),
    ],
)
def test_bools_among_numbers_are_rejected(body: bytes, dtype: str) -> None:
    code, message = error(predict, body, sig({"x": dtype}))
    assert code == "INVALID_ARGUMENT"
    assert " is not of expected type: " in message
    assert "Type: True" in message or "Type: False" in message


def test_request_built_without_parse_body() -> None:
    req = codec.PredictRequest("serving_default", False, [[0.0, 1.0], [True, 2.0]])
    _, message = error(codec.to_tensors, req, sig({"x": F}))
    assert "JSON Value: true Type: True is not of expected type: float" in message
    req = codec.PredictRequest("serving_default", True, [[0.0, 1.0]])
    assert codec.to_tensors(req, sig({"x": F}))["x"].tolist() == [[0.0, 1.0]]


def test_fast_and_slow_paths_agree() -> None:
    rng = random.Random(7)
    rows = [[rng.uniform(-1e6, 1e6) for _ in range(17)] for _ in range(5)]
    rows[2][3] = 0.0
    fast = predict(orjson.dumps({"instances": rows}), sig({"x": F}))["x"]
    # A string input alongside forces the per-element walk for the same numbers.
    body = orjson.dumps({"instances": [{"x": r, "s": "k"} for r in rows]})
    slow = predict(body, sig({"x": F, "s": S}))["x"]
    np.testing.assert_array_equal(fast, np.array(rows, dtype=np.float32))
    np.testing.assert_array_equal(slow, fast)


# ---------------------------------------------------------------------------- to_tensors: errors

ELEM = "Failed to process element: {} of 'instances' list. Error: INVALID_ARGUMENT: "
KEY = "Failed to process element: {} key: {} of 'instances' list. Error: INVALID_ARGUMENT: "
TYPE = "JSON Value: {} Type: {} is not of expected type: {}"

TENSOR_ERRORS = [
    # shapes (spec 3.2 / 3.4)
    (
        b'{"instances": [[1,2],[3,4],[5,6,7]]}',
        {"x": I32},
        ELEM.format(2) + "Expecting tensor size: 2 but got: 3",
    ),
    (
        b'{"instances": [[1,2],[3,4],[[5,6]]]}',
        {"x": I32},
        ELEM.format(2) + "Expecting shape [2] but got: [1,2]",
    ),
    (b'{"instances": [1, [1]]}', {"x": I32}, ELEM.format(1) + "Expecting shape [] but got: [1]"),
    (
        b'{"instances": [[[1,2],[3]]]}',
        {"x": I32},
        ELEM.format(0) + "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
    ),
    (
        b'{"instances": [[[1,2],3]]}',
        {"x": I32},
        ELEM.format(0)
        + "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
    ),
    (
        b'{"instances": [[[1],[[2]]]]}',
        {"x": I32},
        ELEM.format(0) + "Encountered list at unexpected level: 2 expected < 2",
    ),
    (
        b'{"inputs": [[1,2],[3]]}',
        {"x": F},
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
    ),
    (b'{"inputs": [1, [2]]}', {"x": F}, "Encountered list at unexpected level: 1 expected < 1"),
    (
        b'{"inputs": [[1], 2]}',
        {"x": F},
        "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
    ),
    # value types (spec 3.5)
    (
        b'{"instances": [[1,2],["a","b"]]}',
        {"x": I32},
        ELEM.format(1) + TYPE.format('"a"', "String", "int32"),
    ),
    (b'{"instances": [1.0]}', {"x": I32}, ELEM.format(0) + TYPE.format("1.0", "Number", "int32")),
    (
        b'{"instances": [1e3]}',
        {"x": I64},
        ELEM.format(0) + TYPE.format("1000.0", "Number", "int64"),
    ),
    (
        b'{"instances": [2147483648]}',
        {"x": I32},
        ELEM.format(0) + TYPE.format("2147483648", "Number", "int32"),
    ),
    (
        b'{"instances": [-2147483649]}',
        {"x": "DT_INT8"},
        ELEM.format(0) + TYPE.format("-2147483649", "Number", "int8"),
    ),
    (
        b'{"instances": [9223372036854775808]}',
        {"x": I64},
        ELEM.format(0) + TYPE.format("9223372036854775808", "Number", "int64"),
    ),
    (
        b'{"instances": [1, 9223372036854775808]}',
        {"x": I64},
        ELEM.format(1) + TYPE.format("9223372036854775808", "Number", "int64"),
    ),
    (
        b'{"instances": [-1]}',
        {"x": "DT_UINT32"},
        ELEM.format(0) + TYPE.format("-1", "Number", "uint32"),
    ),
    (
        b'{"instances": [4294967296]}',
        {"x": "DT_UINT32"},
        ELEM.format(0) + TYPE.format("4294967296", "Number", "uint32"),
    ),
    (
        b'{"instances": [18446744073709551616]}',
        {"x": "DT_UINT64"},
        ELEM.format(0) + TYPE.format("1.84467441e+19", "Number", "uint64"),
    ),
    (
        b'{"instances": [0, 1]}',
        {"x": "DT_BOOL"},
        ELEM.format(0) + TYPE.format("0", "Number", "bool"),
    ),
    (b'{"instances": [true]}', {"x": F}, ELEM.format(0) + TYPE.format("true", "True", "float")),
    (b'{"instances": [false]}', {"x": D}, ELEM.format(0) + TYPE.format("false", "False", "double")),
    (b'{"instances": [null]}', {"x": F}, ELEM.format(0) + TYPE.format("null", "Null", "float")),
    (b'{"instances": ["1.5"]}', {"x": F}, ELEM.format(0) + TYPE.format('"1.5"', "String", "float")),
    (b'{"instances": [1.5]}', {"x": S}, ELEM.format(0) + TYPE.format("1.5", "Number", "string")),
    (b'{"instances": [0.1]}', {"x": I32}, ELEM.format(0) + TYPE.format("0.1", "Number", "int32")),
    (
        b'{"instances": [0.123456789]}',
        {"x": I32},
        ELEM.format(0) + TYPE.format("0.123456791", "Number", "int32"),
    ),
    (
        b'{"instances": [[{"a": 1}]]}',
        {"x": F},
        ELEM.format(0) + TYPE.format('{\n    "a": 1\n}', "Object", "float"),
    ),
    (b'{"inputs": NaN}', {"x": I64}, TYPE.format("NaN", "Number", "int64")),
    (b'{"inputs": [[true]]}', {"x": F}, TYPE.format("true", "True", "float")),
    # b64 (spec 3.5)
    (b'{"inputs": [{"b64": "!!!"}]}', {"x": S}, "Unable to base64 decode"),
    (b'{"inputs": [{"b64": "aGVsbG8=="}]}', {"x": S}, "Unable to base64 decode"),
    (b'{"instances": [{"b64": "a"}]}', {"x": S}, ELEM.format(0) + "Unable to base64 decode"),
    (
        b'{"inputs": [{"b64": 5}]}',
        {"x": S},
        'JSON Value: {\n    "b64": 5\n} not formatted correctly for base64 data',
    ),
    (
        b'{"inputs": [{"b64": "aGk=", "x": 1}]}',
        {"x": S},
        'JSON Value: {\n    "b64": "aGk=",\n    "x": 1\n} not formatted correctly for base64 data',
    ),
    # row structure (spec 3.2)
    (
        b'{"instances": [1, 2]}',
        {"a": F, "b": F},
        "instances is a plain list, but expecting list of objects as multiple input tensors "
        "required as per tensorinfo_map",
    ),
    (
        b'{"instances": [{"a": 1, "b": 2}, [1, 20, 30]]}',
        {"a": F, "b": F},
        "Expecting object but got list at item 1 of input list",
    ),
    (
        b'{"instances": [{"x": "a"}, {"b64": "aGk="}]}',
        {"x": S},
        "Expecting object but got list at item 1 of input list",
    ),
    (
        b'{"instances": [["baz"], {"x": ["baz"]}]}',
        {"x": S},
        "Expecting value/list but got object at item 1 of input list",
    ),
    (
        b'{"instances": [{"a": 1, "z": 2}]}',
        {"a": F, "b": F},
        KEY.format(0, "z") + "JSON object: does not have named input: z",
    ),
    (
        b'{"instances": [{"a": 1, "b": 2}, {"a": 1}]}',
        {"a": F, "b": F},
        "Failed to process element: 1 of 'instances' list. JSON object: {\n    \"a\": 1\n} "
        "keys must be equal to: a,b",
    ),
    (
        b'{"instances": [{"a": [1, 2], "b": 1}, {"a": [1], "b": 2}]}',
        {"a": F, "b": F},
        KEY.format(1, "a") + "Expecting tensor size: 2 but got: 1",
    ),
    (
        b'{"instances": [{"a": [[1, 2]], "b": 1}, {"a": [[1], [2]], "b": 2}]}',
        {"a": F, "b": F},
        KEY.format(1, "a") + "Expecting shape [1,2] but got: [2,1]",
    ),
    (
        b'{"instances": [{"a": "x", "b": 1}]}',
        {"a": F, "b": F},
        KEY.format(0, "a") + TYPE.format('"x"', "String", "float"),
    ),
    # columnar structure (spec 3.3)
    (
        b'{"inputs": [1, 2]}',
        {"a": F, "b": F},
        "inputs is a plain value/list, but expecting an object as multiple input tensors "
        "required as per tensorinfo_map",
    ),
    (
        b'{"inputs": {"b64": "aGk="}}',
        {"a": S, "b": S},
        "inputs is a plain value/list, but expecting an object as multiple input tensors "
        "required as per tensorinfo_map",
    ),
    (b'{"inputs": {"a": [1]}}', {"a": F, "b": F}, "Missing named input: b in 'inputs' object."),
    (b'{"inputs": null}', {"x": F}, TYPE.format("null", "Null", "float")),
    # unsupported dtypes: UNIMPLEMENTED, but wrapped as INVALID_ARGUMENT in the row format
    (
        b'{"instances": [1]}',
        {"x": "DT_HALF"},
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: "
        "Conversion of JSON Value: 1 to type: half",
    ),
    (
        b'{"inputs": [[{"a": 1}]]}',
        {"x": "DT_HALF"},
        TYPE.format('{\n    "a": 1\n}', "Object", "half"),
    ),
]


@pytest.mark.parametrize(("body", "inputs", "message"), TENSOR_ERRORS)
def test_to_tensors_errors(body: bytes, inputs: dict[str, str], message: str) -> None:
    assert error(predict, body, sig(inputs)) == ("INVALID_ARGUMENT", message)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [("DT_HALF", "half"), ("DT_COMPLEX64", "complex64"), ("DT_RESOURCE", "resource")],
)
def test_unsupported_input_dtype_columnar(dtype: str, name: str) -> None:
    assert error(predict, b'{"inputs": [1.5]}', sig({"x": dtype})) == (
        "UNIMPLEMENTED",
        f"Conversion of JSON Value: 1.5 to type: {name}",
    )


def test_unsupported_dtype_without_values_passes_like_tf() -> None:
    assert predict(b'{"inputs": []}', sig({"x": "DT_HALF"}))["x"].shape == (0,)


def test_deep_nesting_is_a_client_error() -> None:
    body = b'{"inputs": ' + b"[" * 80 + b"1" + b"]" * 80 + b"}"
    code, message = error(predict, body, sig({"x": F}))
    assert code == "INVALID_ARGUMENT"
    assert "nested too deeply" in message


# ---------------------------------------------------------------------------- encode_predict

ENCODE = [
    # float formatting (spec 3.6): whole numbers carry ".0", float32 has no double noise
    (
        {"y": np.array([3, 0.5, 0.1, 555557.5, 999999], f32)},
        False,
        b'{"predictions":[3.0,0.5,0.1,555557.5,999999.0]}',
    ),
    ({"y": np.array([f32(0.5) * f32(0.2) + f32(2)])}, False, b'{"predictions":[2.1]}'),
    ({"y": np.array([[2.5], [3.0]], f32)}, False, b'{"predictions":[[2.5],[3.0]]}'),
    ({"y": np.array([3.0, 3.5, 4.0], f32)}, True, b'{"outputs":[3.0,3.5,4.0]}'),
    ({"y": np.array([0.1, 3.0, 1 / 3])}, False, b'{"predictions":[0.1,3.0,0.3333333333333333]}'),
    ({"y": np.array(2.5, f32)}, True, b'{"outputs":2.5}'),
    ({"y": np.array(7, np.int64)}, True, b'{"outputs":7}'),
    # non-finite floats as bare tokens
    (
        {"y": np.array([[np.nan, np.inf], [3, -np.inf]], f32)},
        False,
        b'{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}',
    ),
    ({"y": np.array([np.nan, 0.1], f32)}, True, b'{"outputs":[NaN,0.1]}'),
    ({"y": np.array(-np.inf)}, True, b'{"outputs":-Infinity}'),
    (
        {"y": np.array([np.nan, -np.inf], f32), "z": np.array([1, 2], np.int32)},
        False,
        b'{"predictions":[{"y":NaN,"z":1},{"y":-Infinity,"z":2}]}',
    ),
    (
        {"y": np.array([[np.nan], [1]], f32), "z": np.array([1, 2], np.int32)},
        True,
        b'{"outputs":{"y":[[NaN],[1.0]],"z":[1,2]}}',
    ),
    # integers and bools
    (
        {"y": np.array([INT64_MAX, INT64_MIN])},
        False,
        b'{"predictions":[9223372036854775807,-9223372036854775808]}',
    ),
    ({"y": np.array([UINT64_MAX], np.uint64)}, True, b'{"outputs":[18446744073709551615]}'),
    (
        {"y": np.array([-128, 127], np.int8), "u": np.array([255, 0], np.uint8)},
        True,
        b'{"outputs":{"u":[255,0],"y":[-128,127]}}',
    ),
    ({"y": np.array([2**32 - 1], np.uint32)}, True, b'{"outputs":[4294967295]}'),
    ({"y": np.array([[True], [False]])}, False, b'{"predictions":[[true],[false]]}'),
    # strings and bytes
    (
        {"s": np.array([b"hello", "ünï ☃".encode(), b'q"\\\n\x01'], object)},
        True,
        b'{"outputs":["hello","\xc3\xbcn\xc3\xaf \xe2\x98\x83","q\\"\\\\\\n\\u0001"]}',
    ),
    ({"s": np.array([b"\xff\xfe"], object)}, True, b'{"outputs":["\xff\xfe"]}'),
    (
        {"s": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object).reshape(2, 2)},
        True,
        b'{"outputs":[["hello","world"],["tf","serving"]]}',
    ),
    (
        {"s_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object)},
        False,
        b'{"predictions":[[{"b64":"aGVsbG8="},{"b64":"d29ybGQ="}],[{"b64":"dGY="},'
        b'{"b64":"c2VydmluZw=="}]]}',
    ),
    ({"s_bytes": np.array(b"\xff", object)}, True, b'{"outputs":{"b64":"/w=="}}'),
    ({"s": np.array(["plain"])}, True, b'{"outputs":["plain"]}'),
    # several outputs (names sorted) and the TF multi-output example
    (
        {
            "int_tensor": np.array([[1, 2], [3, 4]], np.int32),
            "float_tensor": np.array([[1.0], [2.0]], f32),
            "double_scalar_tensor": np.array([8.0, 9.0]),
            "str_tensor": np.array([b"foo", b"baz"], object),
            "str_tensor_bytes": np.array([b"hello", b"tf"], object),
        },
        False,
        b'{"predictions":[{"double_scalar_tensor":8.0,"float_tensor":[1.0],"int_tensor":[1,2],'
        b'"str_tensor":"foo","str_tensor_bytes":{"b64":"aGVsbG8="}},{"double_scalar_tensor":9.0,'
        b'"float_tensor":[2.0],"int_tensor":[3,4],"str_tensor":"baz","str_tensor_bytes":{"b64":"dGY="}}]}',
    ),
    (
        {"a": np.array(1.5, f32), "b": np.array([[1, 2, 3]], np.int64)},
        True,
        b'{"outputs":{"a":1.5,"b":[[1,2,3]]}}',
    ),
    # 0-sized batches
    ({"y": np.zeros((0, 3), f32)}, False, b'{"predictions":[]}'),
    ({"y": np.zeros((0,), f32), "z": np.zeros((0, 2), object)}, False, b'{"predictions":[]}'),
    ({"y": np.zeros((2, 0), f32)}, True, b'{"outputs":[[],[]]}'),
    ({"y": np.zeros((0,), np.complex64)}, True, b'{"outputs":[]}'),
]


@pytest.mark.parametrize(("outputs", "columnar", "expected"), ENCODE)
def test_encode_predict(outputs: dict[str, np.ndarray], columnar: bool, expected: bytes) -> None:
    assert codec.encode_predict(outputs, columnar) == expected


ENCODE_ERRORS = [
    ({"y": np.array(1.0, f32)}, False, "Tensor name: y has no shape information"),
    ({"a": np.zeros((2, 1)), "b": np.array(1)}, False, "Tensor name: b has no shape information"),
    (
        {"a": np.zeros((2, 1)), "b": np.zeros((3,))},
        False,
        "Tensor name: b has inconsistent batch size: 3 expecting: 2",
    ),
    (
        {"y": np.array([1 + 2j], np.complex64)},
        True,
        "Failed to write JSON value for tensor type: complex64",
    ),
    ({"y": np.array([1 + 2j])}, False, "Failed to write JSON value for tensor type: complex128"),
    ({"y": np.array([1.5], np.float16)}, True, "Failed to write JSON value for tensor type: half"),
    ({"y": np.array([1], np.uint16)}, True, "Failed to write JSON value for tensor type: uint16"),
    ({}, True, "Cannot convert empty tensor map to JSON"),
]


@pytest.mark.parametrize(("outputs", "columnar", "message"), ENCODE_ERRORS)
def test_encode_predict_errors(
    outputs: dict[str, np.ndarray], columnar: bool, message: str
) -> None:
    code, text = error(codec.encode_predict, outputs, columnar)
    assert code == "INVALID_ARGUMENT"
    assert text.startswith(message)


def test_encode_parses_back_to_the_same_floats() -> None:
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        values = np.concatenate(
            [
                rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200),
                rng.integers(-(10**6), 10**6, 50),
                [9e6, 3e-5, 1e20, 0.0, -0.0, 123456789.0],
            ]
        ).astype(dtype)
        text = codec.encode_predict({"y": values}, True)
        parsed = np.array(loads(text)["outputs"], dtype=dtype)
        np.testing.assert_array_equal(parsed, values)
        for token in text[len(b'{"outputs":[') : -2].split(b","):
            assert b"." in token or b"e" in token, token  # never a bare integer for a float


def test_encode_9e6_deviation_is_numerically_equal() -> None:
    # TF Serving writes 9e+06 and 3e-05 here; hotserve writes the same numbers in another form.
    text = codec.encode_predict({"y": np.array([9e6, 3e-5], f32)}, True)
    assert np.array(loads(text)["outputs"], f32).tolist() == np.array([9e6, 3e-5], f32).tolist()


# ---------------------------------------------------------------------------- classify / regress


def test_parse_examples_without_context() -> None:
    body = b"""{"examples": [
        {"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20},
        {"names": ["baz"], "ratings": 6.0}]}"""
    name, context, examples = codec.parse_examples(codec.parse_body(body), "classify")
    assert (name, context) == ("serving_default", None)
    assert examples == [
        {
            "names": ("bytes", [b"foo", b"bar"]),
            "ratings": ("float", [8.0, 9.0]),
            "age": ("int64", [20]),
        },
        {"names": ("bytes", [b"baz"]), "ratings": ("float", [6.0])},
    ]


def test_parse_examples_with_context_and_signature() -> None:
    body = b"""{"signature_name": "custom", "context": {"query": "pizza", "location": ["sfo"]},
        "examples": [
          {"names": ["foo"], "ratings": [8.0, NaN, Infinity], "age": 20},
          {"names": ["baz", {"b64": "aGVsbG8="}], "intboolmix": [1, true, false]},
          {"ratings": -Infinity, "big": 9223372036854775807, "empty": [], "u": "\\u2603"}]}"""
    name, context, examples = codec.parse_examples(codec.parse_body(body), "regress")
    assert name == "custom"
    assert context == {"query": ("bytes", [b"pizza"]), "location": ("bytes", [b"sfo"])}
    assert examples[0]["names"] == ("bytes", [b"foo"])
    kind, ratings = examples[0]["ratings"]
    assert kind == "float"
    assert ratings[0] == 8.0 and math.isnan(ratings[1]) and ratings[2] == math.inf
    assert examples[1] == {
        "names": ("bytes", [b"baz", b"hello"]),
        "intboolmix": ("int64", [1, 1, 0]),
    }
    assert examples[2] == {
        "ratings": ("float", [-math.inf]),
        "big": ("int64", [INT64_MAX]),
        "empty": ("float", []),
        "u": ("bytes", ["☃".encode()]),
    }


@pytest.mark.parametrize(
    ("value", "feature"),
    [
        (b"2", ("int64", [2])),
        (b"2.0", ("float", [2.0])),
        (b"1e3", ("float", [1000.0])),
        (b"-7", ("int64", [-7])),
        (b"true", ("int64", [1])),
        (b"[false, 3]", ("int64", [0, 3])),
        (b'"s"', ("bytes", [b"s"])),
        (b'{"b64": "aGk="}', ("bytes", [b"hi"])),
        (b"1e39", ("float", [math.inf])),
        (b"18446744073709551616", ("float", [18446744073709551616.0])),
        (b"-9223372036854775808", ("int64", [INT64_MIN])),
    ],
)
def test_feature_kinds(value: bytes, feature: tuple[str, list[Any]]) -> None:
    body = b'{"examples": [{"f": ' + value + b"}]}"
    _, _, examples = codec.parse_examples(codec.parse_body(body), "classify")
    assert examples == [{"f": feature}]


EXAMPLE_ERRORS = [
    (
        b'{"signature_name": ["hello"], "examples": [{"a": 1}]}',
        "'signature_name' key must be a string value.",
    ),
    (b'{"context": [{"names": ["foo"]}]}', "Example must be JSON object but got JSON Array"),
    (b'{"context": 5, "examples": [{"a": 1}]}', "Example must be JSON object but got JSON Number"),
    (
        b'{"signature_name": "x"}',
        "When method is classify, key 'examples' is expected and was not found",
    ),
    (b'{"examples": {"names": ["foo"]}}', "Expecting 'examples' value to be an list/array"),
    (b'{"examples": []}', "'examples' value is an empty array"),
    (b'{"examples": [[{"names": ["foo"]}]]}', "Example must be JSON object but got JSON Array"),
    (b'{"examples": [{"a": 1}, "x"]}', "Example must be JSON object but got JSON String"),
    (
        b'{"examples": [{"names": [10, null]}]}',
        "Feature: names has element with unexpected JSON type: Null",
    ),
    (
        b'{"examples": [{"names": null}]}',
        "Feature: names has element with unexpected JSON type: Null",
    ),
    (
        b'{"examples": [{"names": [10, {"test": 10}]}]}',
        "Feature: names has element with unexpected JSON type: Object",
    ),
    (
        b'{"examples": [{"names": [[10], 20]}]}',
        "Feature: names has element with unexpected JSON type: Array",
    ),
    (
        b'{"examples": [{"names": [10, 10.0]}]}',
        "Unexpected element type in feature: names expecting type: int64",
    ),
    (
        b'{"examples": [{"names": [1.5, 2]}]}',
        "Unexpected element type in feature: names expecting type: float",
    ),
    (
        b'{"examples": [{"names": ["a", true]}]}',
        "Unexpected element type in feature: names expecting type: bytes",
    ),
    (
        b'{"examples": [{"names": [1.0, {"b64": "!"}]}]}',
        "Unexpected element type in feature: names expecting type: float",
    ),
    (
        b'{"examples": [{"names": [20, 18446744073709551603]}]}',
        "Feature: names has uint64_t element. Only int64_t is supported.",
    ),
    (b'{"examples": [{"names": {"b64": "!!"}}]}', "Unable to base64 decode"),
]


@pytest.mark.parametrize(("body", "message"), EXAMPLE_ERRORS)
@pytest.mark.parametrize("method", ["classify", "regress"])
def test_parse_examples_errors(body: bytes, message: str, method: Any) -> None:
    code, text = error(codec.parse_examples, codec.parse_body(body), method)
    assert code == "INVALID_ARGUMENT"
    assert message in text
    if "When method is" in message or "'examples' value" in message:
        assert text.startswith("JSON Value: {")


CLASSIFY_SIG = sig({"inputs": S}, {"scores": F}, "classify_x_to_y", "tensorflow/serving/classify")


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        (CLASSIFY_SIG, ("inputs", None, "scores")),
        (sig({"inputs": S}, {"classes": S}), ("inputs", "classes", None)),
        (sig({"inputs": S}, {"classes": S, "scores": F}), ("inputs", "classes", "scores")),
        (sig({"inputs": S}, {"classes": S, "other": F}), ("inputs", "classes", None)),
    ],
)
def test_classify_io(signature: Signature, expected: tuple[str, Any, Any]) -> None:
    assert checks.classify_io(signature) == expected


DEBUG = (
    'inputs {\n  key: "x"\n  value {\n    name: "x:0"\n    dtype: DT_FLOAT\n    tensor_shape {\n'
    '      unknown_rank: true\n    }\n  }\n}\noutputs {\n  key: "scores"\n  value {\n'
    '    name: "scores:0"\n    dtype: DT_FLOAT\n    tensor_shape {\n      unknown_rank: true\n'
    '    }\n  }\n}\nmethod_name: "tensorflow/serving/predict"\n'
)


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (sig({"inputs": S, "b": S}, {"scores": F}), "Expected one input Tensor."),
        (
            sig({"inputs": S}, {"scores": F, "a": F, "b": F}),
            "Expected one or two output Tensors, found 3",
        ),
        (sig({"x": F}, {"scores": F}), "No classification inputs found in SignatureDef: " + DEBUG),
        (
            sig({"inputs": S}, {"y": F}),
            "Expected classification signature outputs to contain at least one of "
            '"classes" or "scores". Signature was: inputs {',
        ),
    ],
)
def test_classify_io_errors(signature: Signature, message: str) -> None:
    code, text = error(checks.classify_io, signature)
    assert code == (
        "INVALID_ARGUMENT" if message.startswith("Expected one") else "FAILED_PRECONDITION"
    )
    assert text.startswith(message)


def test_signature_debug_string_shapes() -> None:
    signature = Signature(
        "s", "m", {"inputs": TensorSpec("inputs", S, (-1, 1), "t:0")}, {"a": TensorSpec("a", F, ())}
    )
    _, text = error(checks.regress_io, signature)
    assert "dim {\n        size: -1\n      }\n      dim {\n        size: 1\n      }" in text
    assert 'key: "a"\n  value {\n    dtype: DT_FLOAT\n    tensor_shape {\n    }' in text


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (sig({"inputs": S, "b": S}, {"outputs": F}), "Expected one input Tensor."),
        (sig({"inputs": S}, {"outputs": F, "b": F}), "Expected one output Tensor."),
        (sig({"x": S}, {"outputs": F}), "No regression inputs found in SignatureDef: inputs {"),
        (sig({"inputs": S}, {"y": F}), "No regression outputs found in SignatureDef: inputs {"),
    ],
)
def test_regress_io(signature: Signature, message: str) -> None:
    assert checks.regress_io(sig({"inputs": S}, {"outputs": F})) == ("inputs", "outputs")
    code, text = error(checks.regress_io, signature)
    assert code == (
        "INVALID_ARGUMENT" if message.startswith("Expected one") else "FAILED_PRECONDITION"
    )
    assert text.startswith(message)


CLASSES = np.array([[b"car", b"bike", b"bus"], [b"car", b"bike", b"bus"]], object)
SCORES = np.array([[0.2, 0.7, 0.1], [0.7, 0.1, 0.2]], f32)


@pytest.mark.parametrize(
    ("classes", "scores", "expected"),
    [
        (None, np.array([[12.0]], f32), b'{"results":[[["",12.0]]]}'),
        (None, np.array([[3.0], [np.nan]], f32), b'{"results":[[["",3.0]],[["",NaN]]]}'),
        (
            CLASSES,
            SCORES,
            b'{"results":[[["car",0.2],["bike",0.7],["bus",0.1]],'
            b'[["car",0.7],["bike",0.1],["bus",0.2]]]}',
        ),
        (CLASSES[:1, :2], None, b'{"results":[[["car",0.0],["bike",0.0]]]}'),
        (
            np.array([[b"\xc3\xa9"], [b'"q"']], object),
            np.array([[-np.inf], [1]], f32),
            b'{"results":[[["\xc3\xa9",-Infinity]],[["\\"q\\"",1.0]]]}',
        ),
    ],
)
def test_encode_classify(classes: Any, scores: Any, expected: bytes) -> None:
    assert codec.encode_classify(classes, scores) == expected


@pytest.mark.parametrize(
    ("classes", "scores", "num", "message"),
    [
        (
            None,
            np.array([1.0], f32),
            None,
            "Expected Tensor shape: [batch_size num_classes] but got [1]",
        ),
        (np.array([[1]]), None, None, "Expected classes Tensor of DT_STRING. Got: DT_INT64"),
        (None, np.array([[1.0]]), None, "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
        (None, np.zeros((2, 1), f32), 3, "Expected scores output batch size of 3. Got: 2"),
        (
            CLASSES,
            SCORES[:, :2],
            None,
            "Tensors class and score should match in dim_size(1). Got 3 vs. 2",
        ),
        (None, np.zeros((0, 1), f32), None, "Cannot convert empty ClassificationResults to JSON"),
    ],
)
def test_encode_classify_errors(classes: Any, scores: Any, num: Any, message: str) -> None:
    assert error(codec.encode_classify, classes, scores, num) == ("INVALID_ARGUMENT", message)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (np.array([[42.0]], f32), b'{"results":[42.0]}'),
        (np.array([3.5, 4.0], f32), b'{"results":[3.5,4.0]}'),
        (
            np.array([0.2, np.inf, 1.0, -np.inf, np.nan], f32),
            b'{"results":[0.2,Infinity,1.0,-Infinity,NaN]}',
        ),
        (np.array([[f32(0.5) * f32(0.2) + f32(2)]]), b'{"results":[2.1]}'),
    ],
)
def test_encode_regress(outputs: np.ndarray, expected: bytes) -> None:
    assert codec.encode_regress(outputs) == expected


@pytest.mark.parametrize(
    ("outputs", "num", "message"),
    [
        (
            np.zeros((2, 3), f32),
            None,
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            "but got [2,3]",
        ),
        (np.array(1.0, f32), None, "Expected output Tensor shape to be either"),
        (np.zeros((2, 1), f32), 3, "Input batch size did not match output batch size: 3 vs. 2"),
        (np.zeros((2,)), None, "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE"),
        (np.zeros((0,), f32), None, "Cannot convert empty RegressionResults to JSON"),
    ],
)
def test_encode_regress_errors(outputs: np.ndarray, num: Any, message: str) -> None:
    code, text = error(codec.encode_regress, outputs, num)
    assert code == "INVALID_ARGUMENT"
    assert text.startswith(message)


# ---------------------------------------------------------------------------- envelopes


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Servable not found for request: Latest(x)",
            b'{"error":"Servable not found for request: Latest(x)"}',
        ),
        (
            'JSON Value: {\n    "a": "\\u0001"\n}',
            b'{"error":"JSON Value: {\\n    \\"a\\": \\"\\\\u0001\\"\\n}"}',
        ),
        ("caf\u00e9 \x00", b'{"error":"caf\xc3\xa9 \\u0000"}'),
        ("bad \udcff byte", b'{"error":"bad \xef\xbf\xbd byte"}'),
        # Lone surrogates from JSON escapes ("\\ud800"), not from undecodable bytes.
        ("lone \ud800\udc00", b'{"error":"lone \xef\xbf\xbd\xef\xbf\xbd"}'),
    ],
)
def test_encode_error(message: str, expected: bytes) -> None:
    data = codec.encode_error(message)
    assert data == expected
    assert list(loads(data)) == ["error"]


def test_encode_json() -> None:
    obj = {"model_version_status": [{"version": "1", "state": "AVAILABLE"}], "n": np.int64(3)}
    assert loads(codec.encode_json(obj)) == {**obj, "n": 3}
    assert loads(codec.encode_json(obj, pretty=True)) == {**obj, "n": 3}
    assert b"\n" in codec.encode_json(obj, pretty=True)


def test_error_from_a_string_value_with_invalid_utf8_is_encodable() -> None:
    body = b'{"instances": ["a\xff"]}'
    _, message = error(predict, body, sig({"x": F}))
    assert codec.encode_error(message).startswith(b'{"error":"Failed to process element: 0')
