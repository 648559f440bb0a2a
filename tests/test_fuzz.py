"""Property test of every route: malformed bodies, huge or odd shapes, odd unicode, wrong types and
odd paths, thrown at the app (admin API on) through its ASGI interface. For every case: no 5xx, an
error body that is TF Serving's `{"error": "..."}` without a traceback or a file path, and the
server still answers a correct request correctly afterwards.

The default run draws FUZZ_EXAMPLES cases per test (a few thousand in all, seconds); the
`slow`-marked run draws 10x more.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.settings import Settings
from tests.harness import REPO, running_app

HALF = REPO / "models" / "half_plus_two"
TOKEN = "fuzz-admin-token-0123456789abcdef"
FUZZ_EXAMPLES = 1000

MODEL_NAMES = st.sampled_from(["half", "nope", "..", "../..", "%2e%2e", "h%00", "\u00e9\u4e2d", ""])
SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12
)
VERSIONS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str), SEGMENT, st.just("2")
)
VERBS = st.sampled_from([":predict", ":classify", ":regress", "/metadata", "", ":bogus"])


@st.composite
def v1_paths(draw: st.DrawFn) -> str:
    """TF Serving's route grammar with odd names, versions and labels (percent-encoded where
    HTTP needs it; "%" and "." left as drawn, so "..", "%2e%2e" and "%00" reach the server)."""
    name = quote(draw(MODEL_NAMES | SEGMENT), safe="%.")
    middle = draw(st.sampled_from(["", "/versions/", "/labels/"]))
    if middle:
        middle += quote(draw(VERSIONS), safe="%.")
    return f"/v1/models/{name}{middle}{draw(VERBS)}"


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.fixed_dictionaries({"b64": st.text(max_size=20)}),
)
JSON_VALUES = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
# Lone surrogates (valid JSON escapes, not encodable as UTF-8), a BOM, separators, a NUL.
ODD_CHARACTERS = st.sampled_from(["", "\ud800", "\udcff", "\udfff", "\ufeff", "\u2028", "\x00"])
KEYS = st.sampled_from(
    ["instances", "inputs", "signature_name", "examples", "context", "x", "b64", ""]
)
REQUEST_OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=4)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        depth = draw(st.integers(1, 20000))
        return b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    if kind == 2:  # a long flat list, or rows of different lengths
        n = draw(st.integers(0, 5000))
        rows = draw(st.lists(st.integers(0, 5), min_size=1, max_size=5))
        ragged = [[1.0] * r for r in rows]
        return json.dumps({"instances": [0.5] * n if n % 2 else ragged}).encode()
    if kind == 3:  # odd unicode, lone surrogates included (json.dumps writes them as "\ud800")
        text = draw(st.text(max_size=60)) + draw(ODD_CHARACTERS)
        return json.dumps({"instances": [text], "signature_name": text}).encode()
    if kind == 4:
        return (
            b'{"instances": ['
            + draw(st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"-0"]))
            + b"]}"
        )
    return json.dumps(draw(REQUEST_OBJECTS)).encode()


OTHER_ROUTES = st.sampled_from(
    [
        ("GET", "/"),
        ("GET", "/status.js"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/monitoring/prometheus/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/admin/v1/status"),
        ("GET", "/admin/v1/models/{name}"),
        ("GET", "/admin/v1/events?model={name}&limit={v}"),
        ("POST", "/admin/v1/config/reload"),
        ("POST", "/admin/v1/models/{name}/versions/{v}/load"),
        ("POST", "/admin/v1/models/{name}/versions/{v}/unload?force={v}"),
        ("PUT", "/admin/v1/models/{name}/pin"),
        ("DELETE", "/admin/v1/models/{name}/pin"),
        ("PUT", "/admin/v1/models/{name}/labels/{name}"),
        ("DELETE", "/admin/v1/models/{name}/labels/{name}"),
    ]
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    options = Settings(
        model_name="half",
        model_base_path=str(HALF),
        version_settle_seconds=0,
        admin_token=TOKEN,
        max_request_bytes=1 << 20,
    )
    async with running_app(options) as (_, c):
        yield c


def _check(r: httpx.Response, case: object) -> None:
    assert r.status_code < 500, (case, r.status_code, r.text[:300])
    text = r.text
    assert "Traceback" not in text and str(REPO) not in text and "site-packages" not in text
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        body: Any = r.json()
        assert isinstance(body, dict) and ("error" in body or "detail" in body), text[:200]


async def _still_correct(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/half:predict", json={"instances": [1.0, 2.0]})
    assert r.status_code == 200 and r.json() == {"predictions": [3.5, 4.0]}
    r = await client.get("/admin/v1/models/half", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["default_version"] == 2


def draw_cases(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """`n` cases drawn by Hypothesis (deterministic seed, no shrinking): the requests are then
    sent from the async test, which Hypothesis' runner cannot drive itself."""
    cases: list[Any] = []

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(case: Any) -> None:
        cases.append(case)

    collect()
    return cases


# Half the cases POST to the served model itself, so the bodies reach its signature checks
# (and the error messages quoting them) instead of stopping at a 404 or a malformed path.
MODEL_PATHS = st.sampled_from(
    [f"/v1/models/half{v}:{verb}" for v in ("", "/versions/2") for verb in ("predict", "regress")]
)
V1_CASES = st.one_of(
    st.tuples(st.just("POST"), MODEL_PATHS, bodies()),
    st.tuples(st.sampled_from(["POST", "GET", "PUT"]), v1_paths(), bodies()),
)
OTHER_CASES = st.tuples(
    OTHER_ROUTES,
    MODEL_NAMES | SEGMENT,
    VERSIONS,
    st.one_of(bodies(), st.builds(lambda v: json.dumps({"version": v}).encode(), JSON_LEAF)),
    st.integers(0, 2),
)
AUTH = {
    0: {},
    1: {"Authorization": f"Bearer {TOKEN}"},
    2: {"Authorization": f"Bearer {TOKEN[:-1]}"},
}


async def _run_v1(client: httpx.AsyncClient, n: int) -> None:
    for method, path, body in draw_cases(V1_CASES, n):
        r = await client.request(method, path, content=body)
        _check(r, (method, path, body[:200]))


async def _run_other(client: httpx.AsyncClient, n: int) -> None:
    for (method, template), name, v, body, auth in draw_cases(OTHER_CASES, n):
        path = template.format(name=quote(name, safe=""), v=quote(v, safe=""))
        r = await client.request(method, path, content=body, headers=AUTH[auth])
        _check(r, (method, path, body[:200], auth))
        if auth != 1 and path.startswith("/admin/"):
            assert r.status_code == 401, (method, path)


async def test_fuzz_v1_routes(client: httpx.AsyncClient) -> None:
    await _run_v1(client, FUZZ_EXAMPLES)
    await _still_correct(client)


async def test_fuzz_other_routes(client: httpx.AsyncClient) -> None:
    await _run_other(client, FUZZ_EXAMPLES)
    await _still_correct(client)


@pytest.mark.slow
async def test_fuzz_every_route_longer(client: httpx.AsyncClient) -> None:
    await _run_v1(client, FUZZ_EXAMPLES * 10)
    await _run_other(client, FUZZ_EXAMPLES * 10)
    await _still_correct(client)
