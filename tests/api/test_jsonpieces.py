"""Large numeric bodies parsed in pieces give exactly what one orjson call gives."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from app.api import jsonfmt
from app.api.jsonpieces import loads_in_pieces

random.seed(7)
SHAPES: list[Any] = [
    {"instances": [1, 2, 3, 4, 5]},
    {"instances": [[1, 2], [3, 4], [5, 6]]},
    {"inputs": [[[1], [2]], [[3], [4]]]},
    {"instances": []},
    {"instances": [[]]},
    {"instances": [[1.5, [2, [3]]], [4]], "signature_name": "s"},
    {"inputs": [[[], [1, []]], [[2]]]},
    {"instances": [random.random() for _ in range(50)]},
    {
        "instances": [
            [random.randint(-5, 5) for _ in range(random.randint(0, 4))] for _ in range(40)
        ]
    },
    {"instances": [2**64 - 1, -(2**63), 2**63 - 1, 1e300, -0.0]},
]


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 16, 100, 1 << 20])
@pytest.mark.parametrize("obj", SHAPES)
def test_same_as_one_call(obj: Any, piece: int) -> None:
    body = orjson.dumps(obj)
    assert loads_in_pieces(body, piece) == orjson.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances":[1,2,"a"]}',  # a string inside: not this parser's shape
        b'{"instances":[1,2],"instances":[]}',  # the key repeats: orjson keeps the last
        b'{"instances":[1,NaN]}',  # rapidjson tokens: the full parser handles them
        b'{"instances":[[1,2]',  # malformed: the full parser reports it
        b'{"instances":[1,2]} x',  # trailing content: the full parser ignores it
        b'{"instances":[1,2]],[3]}',
        b'{"signature_name":"s","instances":[1]}',  # key not first
        b"[1, 2]",
    ],
)
def test_other_shapes_are_left_to_the_full_parser(body: bytes) -> None:
    assert loads_in_pieces(body, 2) is None


def test_parse_body_uses_pieces_for_large_bodies_with_the_same_result() -> None:
    rows = [[i * 0.5] * 300 for i in range(3000)]
    body = orjson.dumps({"instances": rows, "signature_name": "x"})
    assert len(body) >= jsonfmt.PIECEWISE_BYTES
    assert jsonfmt.parse_body(body) == {"instances": rows, "signature_name": "x"}
    bad = body[:-2] + b"]}"  # broken at the end: still the full parser's message
    with pytest.raises(Exception, match="JSON Parse error"):
        jsonfmt.parse_body(bad)
