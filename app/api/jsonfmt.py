"""TF Serving's JSON text, both ways: body bytes -> plain values (`parse_body`), numpy outputs ->
response bytes (`encode_*`), and parsed values -> the text TF's error messages quote.

Pure functions without I/O or shared state; any thread may call them. `app.api.codec` re-exports
the public ones; routes import them from there.

Deviations from TF Serving (each documented per the spec's QUIRK rule):
- Duplicate keys: the last occurrence wins (orjson); rapidjson keeps every member and TF
  Serving's lookups (FindMember) find the first.
- Floats are written shortest-round-trip for their own width (orjson/ryu), not `%g` re-printed
  with 9/17 digits when that does not round-trip. Both parse back to the identical float32/float64,
  but the text can differ: `9000000.0` where TF writes `9e+06`, `0.00003` for `3e-05`, float32
  1/3 as `0.33333334` (TF: `0.333333343`). Whole numbers still carry `.0`, float32 `0.1` stays
  `0.1`, and non-finite values are the bare tokens `NaN`, `Infinity`, `-Infinity`.
- Bodies are compact, not pretty-printed; with several outputs, names are written sorted.
- DT_STRING elements that are not valid UTF-8 are written as raw bytes inside the JSON string,
  exactly like TF Serving (the body is then not valid UTF-8); valid UTF-8 is written as text.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from app.api.jsonpieces import loads_in_pieces
from app.errors import InvalidArgument

Array = npt.NDArray[Any]

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
FLOAT32_MAX = 3.4028234663852886e38
PIECEWISE_BYTES = 4 << 20  # bodies from this size try `app.api.jsonpieces` first
_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY

_TABLE = "DT_FLOAT=f4 DT_DOUBLE=f8 DT_INT8=i1 DT_INT16=i2 DT_INT32=i4 DT_INT64=i8 DT_UINT8=u1 "
_TABLE += "DT_UINT32=u4 DT_UINT64=u8 DT_BOOL=? DT_STRING=O DT_HALF=f2 DT_UINT16=u2 DT_COMPLEX64=c8"
# TF DataType enum name -> numpy dtype (DT_STRING: object arrays of bytes).
NUMPY_DTYPES = {k: np.dtype(v) for k, v in (item.split("=") for item in _TABLE.split())}
NUMPY_DTYPES["DT_COMPLEX128"] = np.dtype(np.complex128)
_TF_NAMES = {(dt.kind, dt.itemsize): name for name, dt in NUMPY_DTYPES.items()}
# What TF Serving reads from JSON and writes back; orjson writes these natively.
NUMERIC: tuple[str, ...] = (
    "DT_FLOAT",
    "DT_DOUBLE",
    "DT_INT8",
    "DT_INT16",
    "DT_INT32",
    "DT_INT64",
    "DT_UINT8",
)
NUMERIC += ("DT_UINT32", "DT_UINT64", "DT_BOOL")

_CONTROL = {i: f"\\u{i:04X}" for i in range(0x20)}
_CONTROL.update({0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"})
_STR_ESCAPES = {**_CONTROL, ord('"'): '\\"', ord("\\"): "\\\\"}
_RAW_ESCAPE_RE = re.compile(rb'[\x00-\x1f"\\]')
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------------------- names and text


def tf_type_name(dtype: str) -> str:
    """TF's DataTypeString: "DT_FLOAT" -> "float", "DT_HALF" -> "half"."""
    return dtype[3:].lower() if dtype.startswith("DT_") else dtype.lower()


def numpy_tf_name(dtype: np.dtype[Any]) -> str:
    """The TF enum name of a numpy dtype ("S"/"U" strings count as DT_STRING)."""
    if dtype.kind in "SU":
        return "DT_STRING"
    name = _TF_NAMES.get((dtype.kind, dtype.itemsize))
    return name if name is not None else f"DT_{dtype.name.upper()}"


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    """TF's TensorShape::DebugString: "[2,3]"."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def tf_float_text(value: float, float32: bool) -> str:
    """TF's WriteDecimal: `%g`, re-printed with 9/17 digits if that does not round-trip, `.0`
    appended to whole numbers. Used for message text (per element, so not on the hot path)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if float32:
        value = float(np.float32(value))
    text = f"{value:g}"
    back = float(np.float32(float(text))) if float32 else float(text)
    if back != value:
        text = f"{value:.9g}" if float32 else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def json_type(value: Any) -> str:
    """rapidjson's type name of a parsed JSON value, as TF's messages spell it."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def json_repr(value: Any) -> str:
    """TF's JsonValueToString: a parsed JSON value as rapidjson's PrettyWriter prints it, with a
    top-level double in float range written as a float32 (TF's quirk). For error messages only."""
    if isinstance(value, float):
        return tf_float_text(value, float32=abs(value) <= FLOAT32_MAX)
    try:
        return _pretty(value, "")
    except RecursionError:
        return "<nested too deeply>"


def _pretty(value: Any, pad: str) -> str:
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = pad + "    "
        items = (f"{inner}{quote(str(k))}: {_pretty(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        inner = pad + "    "
        return "[\n" + ",\n".join(inner + _pretty(v, inner) for v in value) + "\n" + pad + "]"
    if isinstance(value, str):
        return quote(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        return _nested_double(value)
    return str(value)


def _nested_double(value: float) -> str:
    # rapidjson's Writer::Double: shortest digits, exponent without "+" or leading zeros.
    if not math.isfinite(value):
        return tf_float_text(value, float32=False)
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def quote(text: str) -> str:
    """A JSON string literal the way rapidjson writes it (non-ASCII kept, controls escaped)."""
    return '"' + text.translate(_STR_ESCAPES) + '"'


# ---------------------------------------------------------------------------- parsing


class JsonObject(dict[str, Any]):
    """A parsed request body that remembers its raw bytes (for `may_hold_bools`)."""

    __slots__ = ("raw",)

    def __init__(self, obj: dict[str, Any], raw: bytes) -> None:
        super().__init__(obj)
        self.raw = raw


def may_hold_bools(raw: bytes, probe_limit: int = 64) -> bool:
    """False only if the JSON text has no `true`/`false` token. Probes the rare letters "u" and
    "l" with memchr instead of searching for the words (slow on digit-heavy text)."""
    for probe, word, back in ((b"u", b"true", 2), (b"l", b"false", 2)):
        at = raw.find(probe)
        for _ in range(probe_limit):
            if at < 0:
                break
            if raw.startswith(word, at - back):
                return True
            at = raw.find(probe, at + 1)
        else:
            return True  # too many to check cheaply
    return False


_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|-?Inf(?:inity)?|-NaN', re.DOTALL)
_REASONS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


class _NumberTooBig(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (a `JsonObject`), read the way TF Serving's ParseJson
    (util/json_tensor.cc) has rapidjson read it: a leading UTF-8 byte order mark is skipped
    (rapidjson's UTF-8 MemoryStream skips 0xEF, 0xBB, 0xBF); `NaN`, `-NaN`, `Inf`, `Infinity`,
    `-Inf`, `-Infinity` are numbers (kParseNanAndInfFlag); whatever follows the first complete
    value is ignored (kParseStopWhenDoneFlag); comments and trailing commas are errors (their
    flags are off); integers stay exact (beyond the 64-bit ranges they become doubles);
    bytes that are not UTF-8 pass through (no kParseValidateEncodingFlag), but a `\\u` escape
    of a lone surrogate is an error (rapidjson always checks pairs). Raises
    InvalidArgument with rapidjson's messages and byte offsets."""
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    skip = _bom_length(body)
    data = body[skip:] if skip else body
    # A large numeric body is parsed in pieces, so a thread parsing it lets others run.
    obj = loads_in_pieces(data) if len(data) >= PIECEWISE_BYTES else None
    if obj is None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            obj = _first_value(data, exc, skip)
    if type(obj) is not dict:
        raise InvalidArgument(f"JSON Value: {json_repr(obj)} Is not object")
    return JsonObject(obj, body)


def _bom_length(body: bytes) -> int:
    skip = 0
    for byte in (0xEF, 0xBB, 0xBF):  # each one on its own, as rapidjson does
        if len(body) > skip and body[skip] == byte:
            skip += 1
    return skip


def _first_value(data: bytes, exc: orjson.JSONDecodeError, skip: int) -> Any:
    if exc.msg.startswith("unexpected content after document"):
        # orjson's position counts characters; the document is the bytes before it.
        end = len(
            data.decode("utf-8", "surrogateescape")[: exc.pos].encode("utf-8", "surrogateescape")
        )
        try:
            return orjson.loads(data[:end])
        except orjson.JSONDecodeError:
            pass
    return _slow_loads(data, skip)


_WHITESPACE = " \t\n\r"  # rapidjson's SkipWhitespace set (str.strip's is larger)


def _slow_loads(body: bytes, skip: int = 0) -> Any:
    # Bodies orjson refuses: non-finite tokens, bytes that are not UTF-8, plus real errors.
    # `skip` bytes (a byte order mark) came before `body`: rapidjson's offsets count them.
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    if start == len(text):
        raise InvalidArgument(
            f"JSON Parse error: The document is empty. at offset: {skip + len(body)}"
        )
    shifts: list[int] = []

    def fix(match: re.Match[str]) -> str:
        token = match.group()
        if token in ("Inf", "-Inf"):
            shifts.append(match.start() + 5 * len(shifts))
            return token + "inity"
        return " NaN" if token == "-NaN" else token

    prepared = _TOKEN_RE.sub(fix, text)
    decoder = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)
    # Python's json takes a lone surrogate escape; rapidjson stops there (the first error wins).
    lone = _lone_surrogate(text)
    try:
        obj, end = decoder.raw_decode(prepared, start)  # stops after the first value
        pos = end - 5 * bisect.bisect_left(shifts, end)
        if lone is None or lone >= pos:
            return obj
        reason, offset = "", 0  # replaced below: the lone surrogate came first
    except json.JSONDecodeError as exc:
        reason = _REASONS.get(exc.msg, "Invalid value.")
        if exc.msg == "Expecting ',' delimiter":
            reason = _missing_comma_reason(prepared[: exc.pos])
        pos = exc.pos - 5 * bisect.bisect_left(shifts, exc.pos)
        offset = len(text[:pos].encode("utf-8", "surrogateescape"))
    except _NumberTooBig as exc:
        pos = max(text.find(exc.token), 0)
        reason, offset = "Number too big to be stored in double.", pos
    except (RecursionError, ValueError):
        pos, reason, offset = 0, "Document nested too deeply or number too long.", 0
    if lone is not None and lone < pos:
        reason = "The surrogate pair in string is invalid."
        offset = len(text[:lone].encode("utf-8", "surrogateescape"))
    raise InvalidArgument(f"JSON Parse error: {reason} at offset: {skip + offset}")


_ESCAPE_RE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|.)", re.DOTALL)


def _lone_surrogate(text: str) -> int | None:
    """Index of the first `\\u` escape rapidjson refuses (kParseErrorStringUnicodeSurrogateInvalid,
    reported at the escape's backslash): a high surrogate not followed at once by a low one, or
    a low one on its own. None when there is none. Escapes only occur inside strings, so a
    left-to-right scan pairs every backslash with the character it escapes."""
    if "\\u" not in text:
        return None
    high = -1  # index of a high surrogate escape waiting for its low half
    high_end = -1
    for m in _ESCAPE_RE.finditer(text):
        code = int(m.group(1), 16) if m.group(1) else -1
        if high >= 0:
            if m.start() == high_end and 0xDC00 <= code <= 0xDFFF:
                high = -1
                continue
            return high
        if 0xD800 <= code <= 0xDBFF:
            high, high_end = m.start(), m.end()
        elif 0xDC00 <= code <= 0xDFFF:
            return m.start()
    return high if high >= 0 else None


def _parse_int(token: str) -> int | float:
    value = int(token)
    if INT64_MIN <= value <= UINT64_MAX:
        return value
    return _parse_float(token)  # rapidjson stores integers beyond 64 bits as doubles


def _parse_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):
        raise _NumberTooBig(token)
    return value


def _missing_comma_reason(before: str) -> str:
    stack: list[str] = []
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', before, re.DOTALL):
        char = match.group()
        if char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    if stack and stack[-1] == "{":
        return "Missing a comma or '}' after an object member."
    return "Missing a comma or ']' after an array element."


# ---------------------------------------------------------------------------- envelopes


def encode_json(obj: Any, pretty: bool = False) -> bytes:
    """Small envelopes (status, metadata). numpy values allowed; non-finite floats become null."""
    return orjson.dumps(obj, option=_NUMPY_OPT | (orjson.OPT_INDENT_2 if pretty else 0))


def encode_error(message: str) -> bytes:
    """`{"error": message}`, TF Serving's only error body shape."""
    try:
        return orjson.dumps({"error": message})
    except orjson.JSONEncodeError:
        # Lone surrogates: bytes that were not UTF-8 (kept by surrogateescape) or a JSON
        # "\\ud800" escape (Python's json accepts it). Each becomes U+FFFD.
        return orjson.dumps({"error": _SURROGATE_RE.sub("\ufffd", message)})


# ---------------------------------------------------------------------------- predict


def encode_predict(outputs: Mapping[str, Array], columnar: bool) -> bytes:
    """The predict response (spec 3.6): `{"predictions": ...}` for a row request, `{"outputs":
    ...}` for a columnar one; one output drops its name. Raises InvalidArgument for a row response
    whose outputs are scalars or disagree on the batch size, and for unsupported dtypes."""
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(outputs[name]) for name in sorted(outputs)}
    if columnar:
        if len(arrays) == 1:
            ((name, arr),) = arrays.items()
            return orjson.dumps({"outputs": _tensor_json(name, arr)}, option=_NUMPY_OPT)
        body = {name: _tensor_json(name, arr) for name, arr in arrays.items()}
        return orjson.dumps({"outputs": body}, option=_NUMPY_OPT)
    batch = _batch_size(arrays)
    if len(arrays) == 1:
        ((name, arr),) = arrays.items()
        return orjson.dumps({"predictions": _tensor_json(name, arr)}, option=_NUMPY_OPT)
    per_output = {name: list(_tensor_json(name, arr)) for name, arr in arrays.items()}
    rows = [{name: values[i] for name, values in per_output.items()} for i in range(batch)]
    return orjson.dumps({"predictions": rows}, option=_NUMPY_OPT)


def _batch_size(arrays: Mapping[str, Array]) -> int:
    batch = -1
    for name, arr in arrays.items():
        if arr.ndim == 0:
            # TF's message ends with a space; kept so either text matches as a substring.
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        size = int(arr.shape[0])
        if batch >= 0 and size != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}"
            )
        batch = size
    return batch


def _tensor_json(name: str, arr: Array) -> Any:
    """Something orjson writes as TF Serving would write this tensor (nested by its shape)."""
    tf_name = numpy_tf_name(arr.dtype)
    if arr.size == 0:
        return np.empty(arr.shape, dtype=np.uint8).tolist()
    if tf_name in NUMERIC:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return _nest([orjson.Fragment(t) for t in float_tokens(arr)], arr.shape)
        return arr[()] if arr.ndim == 0 else np.ascontiguousarray(arr)
    if tf_name == "DT_STRING":
        as_b64 = name.endswith("_bytes")
        flat = [_b64_json(v) if as_b64 else string_json(v) for v in arr.ravel().tolist()]
        return _nest(flat, arr.shape)
    raise InvalidArgument(f"Failed to write JSON value for tensor type: {tf_type_name(tf_name)}")


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    level = flat
    for dim in reversed(shape[1:]):
        level = [level[i : i + dim] for i in range(0, len(level), dim)]
    return level


def float_tokens(arr: Array) -> list[bytes]:
    """The JSON text of each element (flattened) of a float array, non-finite ones included."""
    flat = np.ascontiguousarray(arr).ravel()
    finite = np.isfinite(flat)
    text = orjson.dumps(np.where(finite, flat, 0).astype(flat.dtype), option=_NUMPY_OPT)
    tokens = text[1:-1].split(b",") if flat.size else []
    for i in np.flatnonzero(~finite).tolist():
        value = float(flat[i])
        tokens[i] = b"NaN" if math.isnan(value) else b"-Infinity" if value < 0 else b"Infinity"
    return tokens


def string_json(value: bytes | str) -> str | orjson.Fragment:
    """A DT_STRING element: text if it is UTF-8, else the raw bytes in a JSON string (as TF)."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        escaped = _RAW_ESCAPE_RE.sub(lambda m: quote(m.group().decode()).encode()[1:-1], value)
        return orjson.Fragment(b'"' + escaped + b'"')


def _b64_json(value: bytes | str) -> dict[str, str]:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return {"b64": base64.b64encode(raw).decode("ascii")}


# ---------------------------------------------------------------------------- classify/regress


def encode_classify(
    classes: Array | None, scores: Array | None, num_examples: int | None = None
) -> bytes:
    """`{"results": [[[label, score], ...], ...]}` (spec 6.3): label "" without a classes output,
    score 0.0 without scores. Validates both like TF's PostProcessClassificationResult."""
    batch = num_examples
    if classes is not None:
        batch = _check_classify_output(classes, "classes", "DT_STRING", batch)
    if scores is not None:
        batch = _check_classify_output(scores, "scores", "DT_FLOAT", batch)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    if not batch:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    shaped = classes if classes is not None else scores
    width = int(shaped.shape[1]) if shaped is not None else 0
    labels = [b'""'] * (batch * width)
    if classes is not None:
        labels = [orjson.dumps(string_json(v)) for v in classes.ravel().tolist()]
    values = float_tokens(scores) if scores is not None else [b"0.0"] * (batch * width)
    pairs = [b"[" + lab + b"," + val + b"]" for lab, val in zip(labels, values, strict=True)]
    rows = (b"[" + b",".join(pairs[i * width : (i + 1) * width]) + b"]" for i in range(batch))
    return b'{"results":[' + b",".join(rows) + b"]}"


def _check_classify_output(arr: Array, what: str, tf_dtype: str, batch: int | None) -> int:
    if arr.ndim != 2:
        raise InvalidArgument(
            f"Expected Tensor shape: [batch_size num_classes] but got {shape_text(arr.shape)}"
        )
    if numpy_tf_name(arr.dtype) != tf_dtype:
        raise InvalidArgument(
            f"Expected {what} Tensor of {tf_dtype}. Got: {numpy_tf_name(arr.dtype)}"
        )
    if batch is not None and arr.shape[0] != batch:
        raise InvalidArgument(f"Expected {what} output batch size of {batch}. Got: {arr.shape[0]}")
    return int(arr.shape[0])


def encode_regress(outputs: Array, num_examples: int | None = None) -> bytes:
    """`{"results": [v, ...]}` (spec 6.3) from a DT_FLOAT `[batch]` or `[batch, 1]` tensor."""
    arr = np.asarray(outputs)
    if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            f"but got {shape_text(arr.shape)}"
        )
    if num_examples is not None and num_examples != arr.shape[0]:
        raise InvalidArgument(
            f"Input batch size did not match output batch size: {num_examples} vs. {arr.shape[0]}"
        )
    if arr.dtype != np.float32:
        # Two spaces after the period, as in TF's regressor.cc.
        raise InvalidArgument(
            f"Expected output Tensor of DT_FLOAT.  Got: {numpy_tf_name(arr.dtype)}"
        )
    if arr.size == 0:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    return b'{"results":[' + b",".join(float_tokens(arr)) + b"]}"
