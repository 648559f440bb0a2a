"""Bounded-cost refusals and the edges of the attack surface, over real HTTP (and TLS)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.harness import REPO, ServerProcess, running_app

HALF = REPO / "models" / "half_plus_two"
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        ["--model_name=half", f"--model_base_path={HALF}", f"--max_request_bytes={LIMIT}"]
    )
    server.start(tmp_path_factory.mktemp("hardening") / "server.log")
    try:
        yield server
    finally:
        server.stop()


def _raw(port: int, head: bytes, chunks: Iterable[bytes] = ()) -> tuple[bytes, int]:
    """Send `head`, then `chunks` until the server answers; (answer, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer, sent


def test_a_declared_huge_body_is_refused_before_any_of_it_is_sent(srv: ServerProcess) -> None:
    head = (
        b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n"
    )
    answer, _ = _raw(srv.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_streamed_body_is_refused_once_past_the_limit_not_read_whole(srv: ServerProcess) -> None:
    head = (
        b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"[" + b"1," * 32000 + b"1]"
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    total = 2000  # ~128 MB offered, 128x the limit

    def chunks() -> Iterator[bytes]:
        for _ in range(total):
            yield chunk

    answer, sent = _raw(srv.port, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total * len(chunk) / 4, sent  # the server stopped reading long before the end
    r = httpx.post(srv.url + "/v1/models/half:predict", json={"instances": [1.0]})
    assert r.json() == {"predictions": [3.5]}


def test_deep_nesting_is_refused_over_http(srv: ServerProcess) -> None:
    for depth in (100, 10_000, 100_000):
        body = b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        r = httpx.post(srv.url + "/v1/models/half:predict", content=body)
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"], r.text[:200]


async def test_deep_nesting_costs_no_memory() -> None:
    settings = Settings(model_name="half", model_base_path=str(HALF), version_settle_seconds=0)
    async with running_app(settings) as (_, client):
        body = b'{"instances": ' + b"[" * 10_000 + b"1" + b"]" * 10_000 + b"}"
        await client.post("/v1/models/half:predict", content=body)  # warm the path
        tracemalloc.start()
        try:
            r = await client.post("/v1/models/half:predict", content=body)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert r.status_code == 400
    assert peak < 2 * 1024 * 1024, peak  # the 20 kB body, its copies, the error: not a tree


def test_names_and_labels_never_reach_paths(srv: ServerProcess) -> None:
    for path in (
        "/v1/models/..%2F..%2Fetc%2Fpasswd:predict",
        "/v1/models/half/labels/..%2F..%2F:predict",
        "/v1/models/%2e%2e/metadata",
        "/v1/models/half/versions/1%2F..%2F..:predict",
        "/v1/models/" + "a" * 5000,
    ):
        r = httpx.post(srv.url + path, json={"instances": [1.0]})
        assert 400 <= r.status_code < 500, (path, r.status_code)
        # The client's own text may be echoed (TF Serving does); no server path, no traceback.
        assert str(REPO) not in r.text and "Traceback" not in r.text


def test_cors_only_with_the_flag(srv: ServerProcess, tmp_path: Path) -> None:
    origin = {"Origin": "https://evil.example"}
    r = httpx.post(srv.url + "/v1/models/half:predict", json={"instances": [1.0]}, headers=origin)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in httpx.get(srv.url + "/", headers=origin).headers
    cors = ServerProcess(
        ["--model_name=half", f"--model_base_path={HALF}", "--rest_api_enable_cors_support"]
    )
    cors.start(tmp_path / "cors.log")
    try:
        r = httpx.post(cors.url + "/v1/models/half:predict", json={"instances": [1.0]})
        assert r.headers["access-control-allow-origin"] == "*"
    finally:
        cors.stop()


def test_tls_for_rest_through_uvicorn(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tls = ServerProcess(
        [
            "--model_name=half",
            f"--model_base_path={HALF}",
            f"--rest_ssl_certfile={cert}",
            f"--rest_ssl_keyfile={key}",
        ]
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = tls.url.replace("http://", "https://")
    with (tmp_path / "tls.log").open("wb") as log:
        proc = subprocess.Popen(tls.args, cwd=REPO, env=tls.env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not _ready(url, context):
                assert proc.poll() is None and time.monotonic() < deadline, "no TLS server"
                time.sleep(0.1)
            r = httpx.post(
                url + "/v1/models/half:predict", json={"instances": [1.0]}, verify=context
            )
            assert r.json() == {"predictions": [3.5]}
            with pytest.raises(httpx.HTTPError):
                httpx.get(tls.url + "/healthz", timeout=5)  # plain HTTP is not served
        finally:
            proc.terminate()
            proc.wait(30)


def _ready(url: str, context: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url + "/readyz", verify=context, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
