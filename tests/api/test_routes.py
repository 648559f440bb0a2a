"""TF Serving's REST API over HTTP (in-process ASGI), against the test models (the `testdata`
fixture: scripts/make_test_models.py's rebuild of TF Serving's), plus TF Serving's own oneDNN
variant and expected metadata JSON where ../shared/testdata exists."""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.settings import Settings
from tests.harness import TF_SERVING_TESTDATA, models_config, running_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODELS = {
    "default": "saved_model_half_plus_two_cpu",
    "two": "saved_model_half_plus_two_2_versions",
    "three": "saved_model_half_plus_three",
    "tf2": "saved_model_half_plus_two_tf2_cpu",
    "counter": "saved_model_counter",
    "matrix": "matrix_half_plus_two",
    "multi": "conformance_multi_io",
    "warm": "saved_model_half_plus_two_with_warmup",
    "mlmd": "saved_model_half_plus_two_mlmd",
    "then3": "half_plus_two_then_three",
}
EXTRA = {
    "two": (
        "model_version_policy { all {} } "
        'version_labels { key: "stable" value: 123 } version_labels { key: "canary" value: 124 }'
    ),
    "then3": 'model_version_policy { all {} } version_labels { key: "old" value: 1 }',
}


# Served only where TF Serving's test data is present (not rebuilt by make_test_models.py).
TF_SERVING_ONLY = {"mkl": "saved_model_half_plus_two_mkl"}
SERVED_TF_SERVING_ONLY = list(TF_SERVING_ONLY) if TF_SERVING_TESTDATA.is_dir() else []


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(
    tmp_path_factory: pytest.TempPathFactory, testdata: Path
) -> AsyncIterator[httpx.AsyncClient]:
    cfg = tmp_path_factory.mktemp("cfg") / "models.config"
    paths = {k: str(testdata / v) for k, v in MODELS.items()}
    paths |= {k: str(TF_SERVING_TESTDATA / TF_SERVING_ONLY[k]) for k in SERVED_TF_SERVING_ONLY}
    cfg.write_text(models_config(paths, EXTRA))
    settings = Settings(model_config_file=str(cfg), max_request_bytes=1 << 20)
    async with running_app(settings) as (_, c):
        yield c


async def post(c: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await c.post(path, content=data)


def err(r: httpx.Response) -> str:
    body = r.json()
    assert list(body) == ["error"], body
    assert r.headers["content-type"] == "application/json"
    return str(body["error"])


# ---- predict ---------------------------------------------------------------------------------


async def test_predict_row_and_columnar(client: httpx.AsyncClient) -> None:
    r = await post(client, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"predictions": [3.0, 3.5, 4.0]}
    r = await post(client, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert r.json() == {"outputs": [3.0, 3.5, 4.0]}
    r = await post(client, "/v1/models/default:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]})
    assert r.json() == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}


async def test_whole_numbers_keep_a_decimal_point(client: httpx.AsyncClient) -> None:
    r = await post(client, "/v1/models/default:predict", {"instances": [2.0]})
    assert b"3.0" in r.content


async def test_named_instances_and_explicit_signature(client: httpx.AsyncClient) -> None:
    body = {"signature_name": "serving_default", "instances": [{"x": 1.0}, {"x": 2.0}]}
    r = await post(client, "/v1/models/default:predict", body)
    assert r.json() == {"predictions": [2.5, 3.0]}


async def test_half_plus_three_and_tf2(client: httpx.AsyncClient) -> None:
    r = await post(client, "/v1/models/three:predict", {"instances": [1.0, 2.0, 5.0]})
    assert r.json() == {"predictions": [3.5, 4.0, 5.5]}
    r = await post(client, "/v1/models/tf2:predict", {"instances": [2.0]})
    assert r.json() == {"predictions": [3.0]}


async def test_matrix_model(client: httpx.AsyncClient) -> None:
    x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    r = await post(client, "/v1/models/matrix:predict", {"instances": [x]})
    assert r.json() == {"predictions": [[[2.5, 3, 3.5], [4, 4.5, 5], [5.5, 6, 6.5]]]}


async def test_other_half_plus_two_variants(client: httpx.AsyncClient) -> None:
    for name in ("warm", "mlmd", *SERVED_TF_SERVING_ONLY):
        r = await post(client, f"/v1/models/{name}:predict", {"instances": [2.0]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0] in (3.0, [3.0])


async def test_multi_io_dtypes_b64_and_int64(client: httpx.AsyncClient) -> None:
    big = 2**53 + 1  # doubled, it is not representable as a double
    body = {
        "instances": [
            {"x": 1.5, "n": big, "flag": True, "text": "héllo"},
            {
                "x": -1.0,
                "n": -3,
                "flag": False,
                "text": {"b64": base64.b64encode(b"\x00ab").decode()},
            },
        ]
    }
    r = await post(client, "/v1/models/multi:predict", body)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert rows[0]["x_plus_one"] == 2.5
    assert rows[0]["n_doubled"] == 2 * big  # exact, not rounded through a double
    assert str(2 * big).encode() in r.content
    assert rows[0]["flag_negated"] is False
    assert rows[0]["text_echo"] == "héllo"
    assert rows[0]["text_bytes"] == {"b64": base64.b64encode("héllo".encode()).decode()}
    assert rows[0]["text_length"] == len("héllo".encode())
    assert base64.b64decode(rows[1]["text_bytes"]["b64"]) == b"\x00ab"


async def test_multi_io_columnar(client: httpx.AsyncClient) -> None:
    body = {"inputs": {"x": [1.0, 2.0], "n": [1, 2], "flag": [True, True], "text": ["a", "b"]}}
    r = await post(client, "/v1/models/multi:predict", body)
    out = r.json()["outputs"]
    assert out["x_plus_one"] == [2.0, 3.0]
    assert out["n_doubled"] == [2, 4]
    body2 = {"signature_name": "independent", "inputs": {"a": [1.0], "b": [1.0, 2.0]}}
    r = await post(client, "/v1/models/multi:predict", body2)
    assert r.json() == {"outputs": {"a_doubled": [2.0], "b_tripled": [3.0, 6.0]}}
    r = await post(
        client, "/v1/models/multi:predict", {"signature_name": "total", "inputs": [1.0, 2.0]}
    )
    assert r.json() == {"outputs": 3.0}


async def test_nan_and_infinity(client: httpx.AsyncClient) -> None:
    r = await post(
        client, "/v1/models/default:predict", b'{"instances": [NaN, Infinity, -Infinity]}'
    )
    assert r.status_code == 200, r.text
    assert b"NaN" in r.content and b"-Infinity" in r.content
    values = json.loads(r.content)["predictions"]
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


async def test_counter_stateful_and_no_input_signature(client: httpx.AsyncClient) -> None:
    r1 = await post(
        client,
        "/v1/models/counter:predict",
        {"signature_name": "incr_counter_by", "inputs": {"delta": 5.0}},
    )
    r2 = await post(
        client,
        "/v1/models/counter:predict",
        {"signature_name": "incr_counter_by", "inputs": {"delta": 5.0}},
    )
    assert r2.json()["outputs"] == r1.json()["outputs"] + 5.0
    r = await post(
        client, "/v1/models/counter:predict", {"signature_name": "get_counter", "inputs": {}}
    )
    assert r.status_code == 400
    assert "Failed to get input map for signature: get_counter" in err(r)


# ---- classify / regress --------------------------------------------------------------------


async def test_regress_and_classify(client: httpx.AsyncClient) -> None:
    r = await post(
        client,
        "/v1/models/default:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
    )
    assert r.json() == {"results": [42.0]}
    r = await post(
        client,
        "/v1/models/default:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]},
    )
    assert r.json() == {"results": [[["", 12.0]]]}
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    r = await post(client, "/v1/models/three:regress", body)
    assert r.json() == {"results": [3.5, 4.0]}


async def test_classify_regress_tf2_and_context(client: httpx.AsyncClient) -> None:
    r = await post(
        client,
        "/v1/models/tf2:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 10.0}]},
    )
    assert r.json() == {"results": [7.0]}
    r = await post(
        client,
        "/v1/models/tf2:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]},
    )
    assert r.json() == {"results": [[["", 7.0]]]}
    body = {
        "signature_name": "regress_x_to_y",
        "context": {"x": 80.0},
        "examples": [{}, {"x": 10.0}],
    }
    r = await post(client, "/v1/models/default:regress", body)
    assert r.json() == {"results": [42.0, 7.0]}


async def test_regress_int_feature_is_a_400(client: httpx.AsyncClient) -> None:
    r = await post(
        client,
        "/v1/models/default:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]},
    )
    assert r.status_code == 400
    err(r)


async def test_classify_errors(client: httpx.AsyncClient) -> None:
    r = await post(client, "/v1/models/default:classify", {"signature_name": "classify_x_to_y"})
    assert r.status_code == 400 and "'examples' is expected" in err(r)
    r = await post(
        client, "/v1/models/default:classify", {"signature_name": "nope", "examples": [{"x": 1.0}]}
    )
    assert r.status_code == 400 and "nope" in err(r)


# ---- versions, labels, status, metadata ------------------------------------------------------


async def test_versions_and_labels(client: httpx.AsyncClient) -> None:
    r = await post(client, "/v1/models/then3/versions/1:predict", {"instances": [1.0]})
    assert r.json() == {"predictions": [2.5]}
    r = await post(client, "/v1/models/then3:predict", {"instances": [1.0]})
    assert r.json() == {"predictions": [3.5]}  # the default is the highest version
    r = await post(client, "/v1/models/then3/labels/old:predict", {"instances": [1.0]})
    assert r.json() == {"predictions": [2.5]}
    r = await post(client, "/v1/models/two/versions/00000124:predict", {"instances": [1.0]})
    assert r.status_code == 200
    r = await post(client, "/v1/models/two/labels/canary:predict", {"instances": [1.0]})
    assert r.status_code == 200


async def test_version_and_label_errors(client: httpx.AsyncClient) -> None:
    r = await post(client, "/v1/models/then3/versions/7:predict", {"instances": [1.0]})
    assert r.status_code == 404
    assert err(r) == "Servable not found for request: Specific(then3, 7)"
    r = await post(client, "/v1/models/then3/labels/nope:predict", {"instances": [1.0]})
    assert r.status_code == 400
    assert err(r) == "Unrecognized servable version label: nope"
    r = await post(client, "/v1/models/nope:predict", {"instances": [1.0]})
    assert r.status_code == 404
    assert err(r) == "Servable not found for request: Latest(nope)"
    r = await post(
        client, "/v1/models/default/versions/99999999999999999999:predict", {"instances": [1.0]}
    )
    assert r.status_code == 400


async def test_status(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/default")
    assert r.status_code == 200
    assert r.json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    r = await client.get("/v1/models/two")
    assert [s["version"] for s in r.json()["model_version_status"]] == ["124", "123"]
    r = await client.get("/v1/models/two/versions/123")
    assert [s["version"] for s in r.json()["model_version_status"]] == ["123"]
    r = await client.get("/v1/models/nope")
    assert r.status_code == 404 and err(r) == "Could not find any versions of model nope"
    r = await client.get("/v1/models/default/versions/9")
    assert r.status_code == 404 and err(r) == "Could not find version 9 of model default"
    r = await client.get("/v1/models")
    assert r.status_code == 400 and err(r) == "Missing model name in request."


async def test_metadata(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/default/metadata")
    assert r.status_code == 200
    got = r.json()
    assert got["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    sigs = got["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {
        "serving_default",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
        "classify_x_to_y",
    }
    assert sigs["serving_default"] == {
        "inputs": {
            "x": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False,
                },
                "name": "x:0",
            }
        },
        "outputs": {
            "y": {
                "dtype": "DT_FLOAT",
                "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False,
                },
                "name": "y:0",
            }
        },
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    assert sigs["classify_x_to_y"]["inputs"]["inputs"] == {
        "dtype": "DT_STRING",
        "tensor_shape": {"dim": [], "unknown_rank": True},
        "name": "tf_example:0",
    }
    r = await client.get("/v1/models/two/versions/123/metadata")
    got = r.json()
    assert got["model_spec"]["version"] == "123"
    assert "classify_x2_to_y3" in got["metadata"]["signature_def"]["signature_def"]
    r = await client.get("/v1/models/two/labels/canary/metadata")
    assert r.json()["model_spec"]["version"] == "124"


async def test_metadata_matches_tf_serving_fixtures(
    client: httpx.AsyncClient, tf_serving_testdata: Path
) -> None:
    """The generated models answer exactly TF Serving's expected JSON for its own models."""
    expected = tf_serving_testdata / "expected"
    r = await client.get("/v1/models/default/metadata")
    assert r.json() == json.loads((expected / "half_plus_two_model_metadata.json").read_text())
    fixture = expected / "saved_model_half_plus_two_2_versions_metadata.json"
    r = await client.get("/v1/models/two/versions/123/metadata")
    assert r.json()["metadata"] == json.loads(fixture.read_text())["metadata"]


async def test_tf2_metadata_has_init_op(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/tf2/metadata")
    sigs = r.json()["metadata"]["signature_def"]["signature_def"]
    assert sigs["__saved_model_init_op"]["method_name"] == ""


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"{", "JSON Parse error"),
        (b"[1, 2]", "Is not object"),
        (
            b'{"signature_name": 5, "instances": [1.0]}',
            "'signature_name' key must be a string value.",
        ),
        (b'{"instances": [1.0], "inputs": [1.0]}', "Not formatted correctly"),
        (b'{"foo": 1}', "Missing 'inputs' or 'instances' key"),
        (b'{"instances": []}', "No values in 'instances' array"),
        (b'{"instances": 1.0}', "Expecting 'instances' to be an list/array"),
        (b'{"instances": ["a"]}', "is not of expected type: float"),
        (b'{"instances": [[1.0], [1.0, 2.0]]}', "Expecting"),
        (
            b'{"signature_name": "nope", "instances": [1.0]}',
            'Serving signature name: "nope" not found',
        ),
        # A lone surrogate escape: refused at parse time, as rapidjson does.
        (b'{"signature_name": "\\udfff", "instances": [1.0]}', "surrogate pair in string"),
    ],
)
async def test_predict_bad_input(client: httpx.AsyncClient, body: bytes, fragment: str) -> None:
    r = await post(client, "/v1/models/default:predict", body)
    assert r.status_code == 400, r.text
    assert fragment in err(r)


async def test_malformed_body_wins_over_unknown_model(client: httpx.AsyncClient) -> None:
    r = await post(client, "/v1/models/nope:predict", b"{")
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/foo"),
        ("POST", "/v1/models/default"),
        ("GET", "/v1/models/default:predict"),
        ("POST", "/v1/models/default/metadata"),
        ("POST", "/v1/models/default/version/1:predict"),
        ("POST", "/v1/models/default/versions/HELLO:predict"),
        ("POST", "/v1/models/default/versions/1/labels/a:predict"),
        ("POST", "/v1/models/default:PREDICT"),
        ("PUT", "/v1/models/default:predict"),
        ("DELETE", "/v1/models/default"),
        ("GET", "/v1/models/default/"),
    ],
)
async def test_malformed_paths(client: httpx.AsyncClient, method: str, path: str) -> None:
    r = await client.request(method, path, content=b'{"instances": [1.0]}')
    assert r.status_code == 400
    assert err(r) == f"Malformed request: {method} {path}"


async def test_non_v1_path_is_404_not_fastapi_shaped(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404
    assert "detail" not in r.json()


async def test_case_insensitive_prefix_and_percent_decoding(client: httpx.AsyncClient) -> None:
    r = await post(client, "/V1/MODELS/default:predict", {"instances": [2.0]})
    assert r.json() == {"predictions": [3.0]}
    r = await post(client, "/v1/models/de%66ault:predict", {"instances": [2.0]})
    assert r.json() == {"predictions": [3.0]}


async def test_body_limit_and_gzip(client: httpx.AsyncClient) -> None:
    r = await post(
        client, "/v1/models/default:predict", b'{"instances": [' + b"1.0," * 400_000 + b"1.0]}"
    )
    assert r.status_code == 413
    err(r)
    raw = json.dumps({"instances": [2.0]}).encode()
    r = await client.post(
        "/v1/models/default:predict",
        content=gzip.compress(raw),
        headers={"content-encoding": "gzip"},
    )
    assert r.json() == {"predictions": [3.0]}


async def test_request_timeout_header(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/models/default:predict",
        content=b'{"instances": [1.0]}',
        headers={"x-request-timeout": "abc"},
    )
    assert r.status_code == 400
    r = await client.post(
        "/v1/models/default:predict",
        content=b'{"instances": [1.0]}',
        headers={"x-request-timeout": "5"},
    )
    assert r.status_code == 200


async def test_health_and_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/models/{model_name}:predict" in spec["paths"]
