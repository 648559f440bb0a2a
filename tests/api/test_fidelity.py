"""Input decoding as lenient as TF Serving's C++ (issue 7, section 1), error codes (section 2)
and Content-Length (section 4), over real HTTP against a real `python -m app` server.

Models are built by the test (tests/api/fidelity_models.py) in a subprocess, so nothing here
needs ../shared. Requests go through `http.client` so the path reaches the server byte for byte
(percent escapes included) and the response headers are what the socket carried.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.harness import REPO, ServerProcess, models_config, wait_all_available

BLOB = bytes(range(100))
TFS_ESCAPED = "modelname%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D"
TFS_DECODED = "modelname!#$%&'()*+,/:;=?@[]"  # http_rest_api_util_test.cc pins this pair


def build_models(root: Path) -> dict[str, Path]:
    """Build every model in one subprocess (TensorFlow stays out of the test process)."""
    names = {
        "blob": "blob",
        "half": "half_plus_two",
        "det": "detector",
        "ex": "bytes_examples",
    }
    script = "from pathlib import Path\nfrom tests.api import fidelity_models as m\n"
    for key, fn in names.items():
        script += f"m.{fn}(Path({str(root / key)!r}))\n"
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=300)
    return {key: root / key for key in names}


def serve(args: list[str], log: Path) -> contextlib.AbstractContextManager[ServerProcess]:
    """A real server, stopped on every path (the harness owns the process from the start)."""
    return harness.server(args, log, ready_timeout=120)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("fidelity-models"))


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fidelity-server")
    half = str(models["half"])
    entries = {
        "blob": str(models["blob"]),
        "debug/saved_model_half_plus_two_cpu": half,
        TFS_DECODED: half,
        "a+b": half,
        "det": str(models["det"]),
        "ex": str(models["ex"]),
    }
    labels = 'model_version_policy { all {} } version_labels { key: "stable:2024" value: 123 }'
    cfg = tmp / "models.config"
    cfg.write_text(models_config(entries, {"debug/saved_model_half_plus_two_cpu": labels}))
    with serve([f"--model_config_file={cfg}"], tmp / "server.log") as proc:
        wait_all_available(proc.url, {"debug/saved_model_half_plus_two_cpu": 2})
        yield f"127.0.0.1:{proc.port}"


def call(
    host: str,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on its own connection; the path is sent exactly as given."""
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def ok_json(status: int, body: bytes) -> Any:
    assert status == 200, body
    return json.loads(body)


# ---- base64 (tensorflow/serving#1141): absl::Base64Unescape's rules -------------------------


def b64_forms() -> dict[str, tuple[str, bytes]]:
    return {
        "oneline": (base64.b64encode(BLOB).decode(), BLOB),
        "wrapped": (base64.encodebytes(BLOB).decode(), BLOB),  # '\n' every 76 chars + at end
        "dotpad": (base64.b64encode(BLOB[:98]).decode().replace("=", "."), BLOB[:98]),
        "unpadded": (base64.b64encode(BLOB[:98]).decode().rstrip("="), BLOB[:98]),
        "spaces": (" ".join(base64.b64encode(b"hello").decode()) + "\t\r\n", b"hello"),
    }


@pytest.mark.parametrize("form", list(b64_forms()))
def test_b64_decodes_like_absl_in_rows_and_columns(server: str, form: str) -> None:
    text, raw = b64_forms()[form]
    for body, key in (
        ({"instances": [{"b64": text}]}, "predictions"),
        ({"inputs": [{"b64": text}]}, "outputs"),
    ):
        status, _, out = call(server, "POST", "/v1/models/blob:predict", body)
        answer = ok_json(status, out)[key]
        row = answer[0] if key == "predictions" else {k: v[0] for k, v in answer.items()}
        assert row["length"] == len(raw)
        assert base64.b64decode(row["echo_bytes"]["b64"]) == raw


@pytest.mark.parametrize(
    "text", ["aGVsbG8-", "aGVsbG8_", "aGVs\x00bG8=", "aGVsbG8==", "a", "aGk=x"]
)
def test_b64_outside_absl_alphabet_or_padding_stays_400(server: str, text: str) -> None:
    status, _headers, out = call(
        server, "POST", "/v1/models/blob:predict", {"instances": [{"b64": text}]}
    )
    assert status == 400
    assert "Unable to base64 decode" in json.loads(out)["error"]


def test_scalar_string_output_keeps_trailing_nul_bytes(server: str) -> None:
    # A columnar scalar makes the model's outputs 0-d. TF hands a 0-d string back as Python
    # bytes; a fixed-width numpy "S" array would drop its trailing NULs (TF Serving keeps them).
    raw = b"\x00ab\x00\x00"
    body = {"inputs": {"b64": base64.b64encode(raw).decode()}}
    status, _, out = call(server, "POST", "/v1/models/blob:predict", body)
    outputs = ok_json(status, out)["outputs"]
    assert outputs["length"] == len(raw)
    assert base64.b64decode(outputs["echo_bytes"]["b64"]) == raw


def test_b64_features_of_classify_and_regress(server: str) -> None:
    wrapped = base64.encodebytes(BLOB).decode()
    dotted = base64.b64encode(BLOB[:98]).decode().replace("=", ".")
    body = {
        "signature_name": "regress_len",
        "examples": [{"b": {"b64": wrapped}}, {"b": {"b64": dotted}}],
    }
    status, _, out = call(server, "POST", "/v1/models/ex:regress", body)
    assert ok_json(status, out) == {"results": [100.0, 98.0]}
    body = {"signature_name": "classify_len", "examples": [{"b": {"b64": wrapped}}]}
    status, _, out = call(server, "POST", "/v1/models/ex:classify", body)
    assert ok_json(status, out) == {"results": [[["", 100.0]]]}
    body = {"signature_name": "regress_len", "examples": [{"b": {"b64": "aGk_"}}]}
    status, _, out = call(server, "POST", "/v1/models/ex:regress", body)
    assert status == 400 and "Unable to base64 decode" in json.loads(out)["error"]


# ---- percent-encoded names and labels (tensorflow/serving#1726) ------------------------------

DEBUG = "/v1/models/debug%2Fsaved_model_half_plus_two_cpu"


def test_percent_encoded_name_status_metadata_predict_and_label(server: str) -> None:
    status, _, out = call(server, "GET", DEBUG)
    versions = [s["version"] for s in ok_json(status, out)["model_version_status"]]
    assert sorted(versions) == ["123", "124"]
    status, _, out = call(server, "POST", f"{DEBUG}:predict", {"instances": [2.0]})
    assert ok_json(status, out) == {"predictions": [3.0]}
    status, _, out = call(server, "GET", f"{DEBUG}/versions/123/metadata")
    meta = ok_json(status, out)
    assert meta["model_spec"] == {
        "name": "debug/saved_model_half_plus_two_cpu",
        "signature_name": "",
        "version": "123",
    }
    status, _, out = call(
        server, "POST", f"{DEBUG}/labels/stable%3A2024:predict", {"instances": [2.0]}
    )
    assert ok_json(status, out) == {"predictions": [3.0]}
    status, _, out = call(server, "GET", f"{DEBUG}/labels/stable%3a2024/metadata")
    assert ok_json(status, out)["model_spec"]["version"] == "123"


def test_tf_serving_pinned_escapes_resolve_to_the_decoded_name(server: str) -> None:
    status, _, out = call(server, "POST", f"/v1/models/{TFS_ESCAPED}:predict", {"instances": [4.0]})
    assert ok_json(status, out) == {"predictions": [4.0]}
    status, _, out = call(server, "GET", f"/v1/models/{TFS_ESCAPED}/metadata")
    assert ok_json(status, out)["model_spec"]["name"] == TFS_DECODED


def test_unescape_is_curls_plus_stays_plus_and_bad_escapes_stay(server: str) -> None:
    # curl_easy_unescape does not turn '+' into a space.
    status, _, out = call(server, "POST", "/v1/models/a+b:predict", {"instances": [0.0]})
    assert ok_json(status, out) == {"predictions": [2.0]}
    status, _, out = call(server, "POST", "/v1/models/a%2Bb:predict", {"instances": [0.0]})
    assert ok_json(status, out) == {"predictions": [2.0]}
    # '%' without two hex digits is kept as is: a name that is simply not served.
    status, _, out = call(server, "GET", "/v1/models/a%zz")
    assert status == 404 and "a%zz" in json.loads(out)["error"]


def test_escapes_do_not_become_separators_and_raw_path_is_reported(server: str) -> None:
    # Matched raw, the escaped ':' is part of the name, so this is a status request for
    # "x:predict"; a decoded-then-matched path would have been a POST-only route.
    status, _, out = call(server, "GET", "/v1/models/x%3Apredict")
    assert status == 404 and "x:predict" in json.loads(out)["error"]
    status, _, out = call(server, "GET", "/v1/models/x/verSIONS/1/metaDATA")
    assert status == 404  # grammar is case-insensitive; "metaDATA" then asks for status
    status, _, out = call(server, "POST", "/v1/models/x%2F:PREDICT", {"instances": [1.0]})
    assert status == 400
    assert json.loads(out)["error"] == "Malformed request: POST /v1/models/x%2F:PREDICT"


# ---- JSON text, compression, headers ---------------------------------------------------------


def test_json_text_read_like_rapidjson(server: str) -> None:
    url = "/v1/models/debug%2Fsaved_model_half_plus_two_cpu:predict"
    accepted = [
        b'\xef\xbb\xbf{"instances": [2.0]}',  # UTF-8 byte order mark: skipped
        b'{"instances": [2.0]}\x00',  # a C client's terminating NUL: ignored
        b'{"instances": [2.0]} trailing',  # after the root value nothing is read
        b'{"instances": [2.0]}{"instances": [5.0]}',
    ]
    for body in accepted:
        status, _, out = call(server, "POST", url, body)
        assert ok_json(status, out) == {"predictions": [3.0]}, body
    # TF Serving ignores Content-Type: curl -d sends a form type, others text/plain or none.
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/json"):
        status, _, out = call(
            server, "POST", url, b'{"instances": [2.0]}', {"Content-Type": content_type}
        )
        assert ok_json(status, out) == {"predictions": [3.0]}, content_type
    refused = {
        b'{"instances": [2.0],}': "Missing a name for object member.",  # no trailing commas
        b'{"instances": /* c */ [2.0]}': "Invalid value.",  # no comments
        b'\xef\xbb\xbf{"instances": x}': "Invalid value. at offset: 17",  # offsets count the BOM
    }
    for body, message in refused.items():
        status, _, out = call(server, "POST", url, body)
        assert status == 400 and message in json.loads(out)["error"], (body, out)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),  # TF Serving: any Content-Encoding containing "gzip"
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
    ],
)
def test_compressed_bodies(server: str, encoding: str, compress: Any) -> None:
    body = compress(b'{"instances": [2.0, 4.0]}')
    status, _, out = call(server, "POST", f"{DEBUG}:predict", body, {"Content-Encoding": encoding})
    assert ok_json(status, out) == {"predictions": [3.0, 4.0]}


def test_bad_gzip_and_bad_timeout_header_are_400(server: str) -> None:
    status, _, out = call(
        server, "POST", f"{DEBUG}:predict", b"not gzip", {"Content-Encoding": "gzip"}
    )
    assert status == 400 and list(json.loads(out)) == ["error"]
    for value in ("nan", "inf", "soon"):
        status, _, out = call(
            server, "POST", f"{DEBUG}:predict", {"instances": [1.0]}, {"X-Request-Timeout": value}
        )
        assert status == 400, (value, out)


# ---- Content-Length (TF Serving sends one; nothing goes out chunked) ------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", f"{DEBUG}:predict", {"instances": [1.0]}, 200),
        ("GET", DEBUG, None, 200),
        ("GET", f"{DEBUG}/metadata", None, 200),
        ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404),
        ("POST", f"{DEBUG}:predict", b"{", 400),
        ("GET", "/v1/nothing", None, 400),
    ],
)
def test_v1_responses_carry_content_length(
    server: str, method: str, path: str, body: Any, code: int
) -> None:
    status, headers, out = call(server, method, path, body)
    assert status == code
    assert headers.get("Transfer-Encoding") is None
    assert headers.get("Content-Length") == str(len(out))
    assert headers.get("Content-Type") == "application/json"


# ---- error codes: a batch whose outputs are not batch-major (tensorflow/serving#2043, #276) --

DET_BODY = {
    "inputs": {"input_tensor": [[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]]]}
}


def test_not_batch_major_outputs_work_without_batching(server: str) -> None:
    status, _, out = call(server, "POST", "/v1/models/det:predict", DET_BODY)
    outputs = ok_json(status, out)["outputs"]
    assert len(outputs["anchors"]) == 3 and len(outputs["scores"]) == 1


def test_not_batch_major_outputs_are_failed_precondition_with_batching(
    models: dict[str, Path], tmp_path: Path
) -> None:
    args = ["--model_name=det", f"--model_base_path={models['det']}", "--enable_batching"]
    with serve(args, tmp_path / "server.log") as proc:
        host = f"127.0.0.1:{proc.port}"
        status, _, out = call(host, "POST", "/v1/models/det:predict", DET_BODY)
        assert status == 400  # FAILED_PRECONDITION, as TF Serving's batching session
        assert json.loads(out)["error"].startswith(
            "Batched output tensor's 0th dimension does not equal the sum of the 0th "
            "dimension sizes of the input tensors"
        )


def test_head_is_a_malformed_request_with_the_length_of_its_body(server: str) -> None:
    status, headers, out = call(server, "HEAD", DEBUG)
    assert status == 400 and out == b""  # TF Serving: only GET and POST have routes
    expected = json.dumps({"error": f"Malformed request: HEAD {DEBUG}"}, separators=(",", ":"))
    assert headers.get("Content-Length") == str(len(expected))
    status, _, out = call(server, "GET", DEBUG)  # the server is still fine afterwards
    assert status == 200
