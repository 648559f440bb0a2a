"""Parse a large numeric predict body in pieces, so the thread parsing it lets others run.

orjson holds the GIL for a whole `loads` call: a 60 MiB body of numbers is one call of
0.2-0.5 s on this hardware, during which the event loop cannot answer anyone, even when the
parse runs in a worker thread. The common large body is `{"instances": [...]}` or
`{"inputs": [...]}` holding only numbers and brackets; its top-level elements can be found by
counting brackets (bytes.count, no Python loop per byte) and parsed in pieces of about
`PIECE_BYTES`, each a short orjson call with a GIL switch point after it.

`loads_in_pieces` returns the same object `orjson.loads` would, or None whenever the body is not
of that simple shape (strings inside the array, another key repeated, a piece that does not
parse on its own, NaN/Infinity tokens...): the caller then parses the whole body as usual, which
also produces the right error message. Pure function; any thread may call it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

PIECE_BYTES = 1 << 20
# The body starts with its tensor key and an array: `{ "instances" : [`.
_HEAD_RE = re.compile(rb'\s*\{\s*"(instances|inputs)"\s*:\s*\[')


def loads_in_pieces(data: bytes, piece: int = PIECE_BYTES) -> Any | None:
    m = _HEAD_RE.match(data)
    if m is None:
        return None
    start = m.end()  # first byte inside the array
    quote = data.find(b'"', start)
    limit = len(data) if quote < 0 else quote
    end = data.rfind(b"]", start, limit)  # the array's closing bracket, if no string is inside
    if end < 0 or _depth(data, start, end) != 0:
        return None
    rest = orjson_or_none(data[:start] + data[end:])
    key = m.group(1).decode()
    if type(rest) is not dict or rest.get(key) != [] or data.count(m.group(1), end) > 0:
        return None  # not one object around one array, or the key repeats after it
    items: list[Any] = []
    for lo, hi in _pieces(data, start, end, piece):
        part = orjson_or_none(b"[" + data[lo:hi] + b"]")
        if type(part) is not list:
            return None
        items.extend(part)
    rest[key] = items
    return rest


def orjson_or_none(text: bytes) -> Any | None:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _depth(data: bytes, lo: int, hi: int) -> int:
    return data.count(b"[", lo, hi) - data.count(b"]", lo, hi)


def _pieces(data: bytes, start: int, end: int, piece: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of whole top-level elements between `start` and `end`, split at the
    top-level commas (depth 0), each about `piece` bytes."""
    out: list[tuple[int, int]] = []
    lo = pos = start
    depth = 0
    while pos + piece < end:
        target = pos + piece
        depth += _depth(data, pos, target)
        pos = target
        while True:
            while depth > 0:  # inside an element: skip to the brackets that close it
                close = data.find(b"]", pos, end)
                if close < 0:
                    return [(start, end)]  # malformed: let one piece fail as a whole
                depth += _depth(data, pos, close + 1)
                pos = close + 1
            comma = data.find(b",", pos, end)
            if comma < 0 or depth < 0:
                out.append((lo, end))
                return out
            step = _depth(data, pos, comma)
            if step == 0:
                break
            depth += step  # an element starts before that comma: skip it first
            pos = comma
        out.append((lo, comma))
        lo = pos = comma + 1
    out.append((lo, end))
    return out
