"""The C-library decoders TF Serving relies on: absl's Base64Unescape and curl's unescape."""

from __future__ import annotations

import base64

import pytest

from app.api.unescape import base64_unescape, percent_unescape

RAW = bytes(range(256))


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(RAW).decode(),
        base64.encodebytes(RAW).decode(),  # MIME: '\n' every 76 characters
        base64.encodebytes(RAW).decode().replace("\n", "\r\n"),
        "\t " + base64.b64encode(RAW).decode() + " \v\f",
        base64.b64encode(RAW).decode().rstrip("="),  # padding may be omitted
        base64.b64encode(RAW).decode().replace("=", "."),  # '.' pads like '='
    ],
)
def test_absl_accepts(text: str) -> None:
    assert base64_unescape(text) == RAW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", b""),
        ("aGk", b"hi"),
        ("aGk=", b"hi"),
        ("aGk.", b"hi"),
        ("aA", b"h"),
        ("aA==", b"h"),
        ("aA.=", b"h"),  # '=' and '.' mix
        ("aA =\n=", b"h"),  # whitespace between pads
        ("aB==", b"h"),  # unused low bits need not be zero
        ("a G\nk", b"hi"),
    ],
)
def test_absl_rules(text: str, expected: bytes) -> None:
    assert base64_unescape(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "aGk-",  # web-safe alphabet (tensorflow/serving#1141)
        "aGk_",
        "a",  # a last group of one character
        "aGVsbG8==",  # too many pads
        "aA=",  # too few pads (neither none nor the two needed)
        "aGVs=",  # pads after a whole group
        "aG=k",  # data after a pad
        "aGk\x00",  # NUL
        "aGk\x1c",  # not absl whitespace (str.isspace says it is)
        "aGk\u00a0",  # non-ASCII space
        "aGké",
    ],
)
def test_absl_refuses(text: str) -> None:
    assert base64_unescape(text) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"modelname%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D",
            b"modelname!#$%&'()*+,/:;=?@[]",
        ),
        (b"de%66ault", b"default"),
        (b"a+b", b"a+b"),  # '+' is not a space
        (b"a%2bb%2Bc", b"a+b+c"),
        (b"100%", b"100%"),  # malformed escapes stay
        (b"%zz%4", b"%zz%4"),
        (b"%00", b"\x00"),
        (b"%C3%A9", "é".encode()),
        (b"%%41", b"%A"),
    ],
)
def test_curl_unescape(raw: bytes, expected: bytes) -> None:
    assert percent_unescape(raw) == expected
