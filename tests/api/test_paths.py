"""TF Serving's route grammar (http_rest_api_util.cc), matched on the raw path."""

from __future__ import annotations

import pytest

from app.api import paths
from app.api.paths import Route
from app.errors import InvalidArgument


@pytest.mark.parametrize(
    ("method", "raw", "route"),
    [
        ("POST", b"/v1/models/m:predict", Route("predict", "m", None, None)),
        ("POST", b"/v1/models/m/versions/007:classify", Route("classify", "m", 7, None)),
        ("POST", b"/v1/models/m/labels/stable:regress", Route("regress", "m", None, "stable")),
        ("POST", b"/V1/MODELS/m/VERSIONS/2:predict", Route("predict", "m", 2, None)),
        ("POST", b"/v1/models/debug%2Fx:predict", Route("predict", "debug/x", None, None)),
        (
            "POST",
            b"/v1/models/x/labels/stable%3A2024:predict",
            Route("predict", "x", None, "stable:2024"),
        ),
        ("GET", b"/v1/models/m", Route("status", "m", None, None)),
        ("GET", b"/v1/models/m/versions/3", Route("status", "m", 3, None)),
        ("GET", b"/v1/models/m/labels/l", Route("status", "m", None, "l")),
        ("GET", b"/v1/models/m/metadata", Route("metadata", "m", None, None)),
        ("GET", b"/v1/models/m/labels/l/metadata", Route("metadata", "m", None, "l")),
        ("GET", b"/v1/models/a%20b", Route("status", "a b", None, None)),
        ("GET", b"/v1/models/x%3Apredict", Route("status", "x:predict", None, None)),
        ("GET", b"/v1/models/%ff", Route("status", "\udcff", None, None)),
    ],
)
def test_parse(method: str, raw: bytes, route: Route) -> None:
    assert paths.parse(method, raw) == route


def test_metadata_suffix_is_case_sensitive_after_a_case_insensitive_match() -> None:
    # (?i) lets "/METADATA" match the optional group; TF Serving then compares "metadata"
    # exactly, so this is a status request (QUIRK, kept).
    assert paths.parse("GET", b"/v1/models/m/METADATA").kind == "status"


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        ("POST", b"/v1/models/m:PREDICT"),  # the verb is compared case-sensitively
        ("POST", b"/v1/models/m"),
        ("GET", b"/v1/models/m:predict"),
        ("POST", b"/v1/models/m/metadata"),
        ("GET", b"/v1/models/m/"),  # trailing slash
        ("GET", b"/v1/models/m/version/1"),
        ("GET", b"/v1/models/m/versions/-1"),
        ("GET", b"/v1/models/m/versions/1/labels/l"),
        ("GET", b"/v1/foo"),
        ("PUT", b"/v1/models/m"),
        ("HEAD", b"/v1/models/m"),
    ],
)
def test_malformed(method: str, raw: bytes) -> None:
    with pytest.raises(InvalidArgument, match=f"^Malformed request: {method} "):
        paths.parse(method, raw)


def test_malformed_message_shows_the_raw_path() -> None:
    with pytest.raises(InvalidArgument) as info:
        paths.parse("POST", b"/v1/models/a%2Fb:nope")
    assert info.value.message == "Malformed request: POST /v1/models/a%2Fb:nope"


def test_missing_name_and_version_overflow() -> None:
    with pytest.raises(InvalidArgument, match=r"^Missing model name in request\.$"):
        paths.parse("GET", b"/v1/models")
    big = b"9223372036854775808"
    with pytest.raises(
        InvalidArgument, match=f"^Failed to convert version: {big.decode()} to numeric"
    ):
        paths.parse("GET", b"/v1/models/m/versions/" + big)
    assert paths.parse("GET", b"/v1/models/m/versions/9223372036854775807").version == 2**63 - 1


def test_v1_and_raw_path() -> None:
    assert paths.is_v1(b"/v1/models/x") and paths.is_v1(b"/V1/")
    assert not paths.is_v1(b"/%761/models/x")  # not decoded first, as in TF Serving
    scope = {"raw_path": b"/v1/models/a%2Fb?x=1", "path": "/v1/models/a/b"}
    assert paths.raw_path(scope) == b"/v1/models/a%2Fb"
    assert paths.raw_path({"path": "/v1/models/é"}) == "/v1/models/é".encode()


def test_templates_cover_the_grammar() -> None:
    rows = list(paths.templates())
    assert len(rows) == 3 * (3 + 2)
    for method, template, kind, _ in rows:
        concrete = template.format(model_name="m", version=1, label="l").encode()
        assert paths.parse(method.upper(), concrete).kind == kind
