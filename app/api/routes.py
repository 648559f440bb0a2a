"""TF Serving's REST API (`/v1/...`) as one raw ASGI handler, called before FastAPI.

Why raw ASGI: on this hardware FastAPI's per-request machinery costs more than the HTTP transport
and the model together (shared/PERFORMANCE.md), and `:predict` is the hot path. The app
(`app.main.HotserveApp`) hands `/v1` requests straight here, skipping Starlette's middleware
stack; FastAPI keeps everything else (docs, health, metrics). Paths are matched with TF
Serving's own grammar (http_rest_api_handler.cc), so a path FastAPI would route differently still
behaves like TFS.

Flow of a request (one direction): read body once (size-limited) -> codec parse -> registry
resolves and pins one version -> codec builds tensors against that version's signature ->
runner (batcher or direct) -> codec encodes -> bytes out. The pin is released before encoding.
"""

from __future__ import annotations

import gzip
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from app.api import codec
from app.api.errors import http_status
from app.core.lifecycle import ModelVersion
from app.core.registry import Registry
from app.core.types import Signature, VersionStatus
from app.errors import (
    Cancelled,
    DeadlineExceeded,
    HotserveError,
    InvalidArgument,
    PayloadTooLarge,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NAME = r"([^/:]+)"
_SPEC = r"(?:/versions/([0-9]+)|/labels/([^/:]+))?"
PREDICT_RE = re.compile(rf"/v1/models/{_NAME}{_SPEC}:(classify|regress|predict)", re.IGNORECASE)
STATUS_RE = re.compile(rf"/v1/models(?:/{_NAME})?{_SPEC}(?:/(metadata))?", re.IGNORECASE)
V1_RE = re.compile(r"/v1/", re.IGNORECASE)
INT64_MAX = 2**63 - 1
METHODS = {
    "predict": "tensorflow/serving/predict",
    "classify": "tensorflow/serving/classify",
    "regress": "tensorflow/serving/regress",
}
JSON_HEADERS = [(b"content-type", b"application/json")]
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    (b"access-control-allow-headers", b"Content-Type"),
]
TIMEOUT_HEADER = b"x-request-timeout"


class RequestObserver(Protocol):
    """Metrics hook (app.metrics implements it)."""

    def observe(self, model: str, api: str, code: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class RestOptions:
    max_request_bytes: int = 64 * 1024 * 1024
    timeout_ms: int = 30000
    cors: bool = False
    method_name_check: bool = False


@dataclass(frozen=True)
class Target:
    """A parsed `/v1/models/...` path."""

    name: str
    version: int | None
    label: str | None


class Seen:
    """What a request turned out to be, for the metrics observer."""

    __slots__ = ("api", "model")

    def __init__(self) -> None:
        self.model = ""
        self.api = ""


class Reply(Exception):
    """A finished response raised out of a handler (errors and early answers alike)."""

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


def _target(name: str, version: str | None, label: str | None) -> Target:
    v: int | None = None
    if version is not None:
        v = int(version)
        if v > INT64_MAX:
            # TF Serving answers this one with an empty body (QUIRK); hotserve sends the message.
            raise InvalidArgument(f"Failed to convert version: {version}")
    return Target(name, v, label)


def _malformed(method: str, path: str) -> InvalidArgument:
    return InvalidArgument(f"Malformed request: {method} {path}")


def is_v1(scope: Scope) -> bool:
    """Whether TFServingRest answers this request (TF Serving's `(?i)/v1/.*`)."""
    return scope["type"] == "http" and V1_RE.match(scope["path"]) is not None


class TFServingRest:
    """ASGI handler for every `/v1/...` request (route with `is_v1`)."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        options: RestOptions,
        observer: RequestObserver | None = None,
    ) -> None:
        self._registry = registry
        self._opts = options
        self._observer = observer
        self._extra = CORS_HEADERS if options.cors else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        seen = Seen()
        code = "OK"
        try:
            status, body = await self._dispatch(scope, receive, seen)
            headers = JSON_HEADERS + self._extra
        except Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers + self._extra
        except HotserveError as exc:
            code = exc.code
            status, body, headers = self._error(exc)
        except Exception:
            log.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            code, status = "INTERNAL", 500
            body, headers = codec.encode_error("Internal error"), JSON_HEADERS + self._extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if self._observer is not None:
            self._observer.observe(seen.model, seen.api, code, time.perf_counter() - started)

    def _error(self, exc: HotserveError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        headers = JSON_HEADERS + self._extra
        if exc.code == "UNAVAILABLE":
            headers = [*headers, (b"retry-after", b"1")]
        return http_status(exc), codec.encode_error(exc.message), headers

    async def _dispatch(self, scope: Scope, receive: Receive, seen: Seen) -> tuple[int, bytes]:
        """Answer one /v1 request; `seen` learns the model and API as soon as the path parses,
        so failed requests are counted under their model too (as in TF Serving)."""
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS":
            raise self._preflight(scope)
        if method == "POST":
            m = PREDICT_RE.fullmatch(path)
            if m is None or m.group(4) not in METHODS:  # the verb is case-sensitive in TFS too
                raise _malformed(method, path)
            seen.model, seen.api = m.group(1), m.group(4)
            target = _target(m.group(1), m.group(2), m.group(3))
            body = await self._read_body(scope, receive)
            return 200, await self._infer(seen.api, target, body, scope)
        if method == "GET":
            m = STATUS_RE.fullmatch(path)
            if m is None:
                raise _malformed(method, path)
            if m.group(1) is None:
                raise InvalidArgument("Missing model name in request.")
            seen.model = m.group(1)
            target = _target(m.group(1), m.group(2), m.group(3))
            if m.group(4) == "metadata":
                return 200, self._metadata(target)
            return 200, self._status(target)
        raise _malformed(method, path)

    def _preflight(self, scope: Scope) -> Reply:
        origin = next((v for k, v in scope["headers"] if k == b"origin"), b"")
        ok = re.match(rb"https?://", origin) is not None
        return Reply(200 if ok else 400, b"")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._opts.max_request_bytes
        encoding = b""
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
            if key == b"content-encoding":
                encoding = value.lower()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Cancelled("Client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return _gunzip(body, limit) if encoding == b"gzip" else body

    def _deadline(self, scope: Scope) -> float | None:
        budget = self._opts.timeout_ms / 1000 if self._opts.timeout_ms > 0 else None
        for key, value in scope["headers"]:
            if key == TIMEOUT_HEADER:
                try:
                    hint = float(value)
                except ValueError:
                    raise InvalidArgument("X-Request-Timeout must be a number of seconds") from None
                budget = hint if budget is None else min(budget, hint)
        return None if budget is None else time.monotonic() + budget

    async def _infer(self, verb: str, target: Target, body: bytes, scope: Scope) -> bytes:
        deadline = self._deadline(scope)
        obj = codec.parse_body(body)  # a malformed body is a 400 even for an unknown model
        if verb == "predict":
            return await self._predict(obj, target, deadline)
        return await self._examples(verb, obj, target, deadline)

    def _signature(self, mv: ModelVersion, name: str, verb: str) -> Signature:
        sig = mv.signatures.get(name)
        if sig is None:
            if verb == "predict":
                raise InvalidArgument(
                    f'Serving signature name: "{name}" not found in signature def'
                )
            raise InvalidArgument(f"No signature was found with the name: {name}")
        if self._opts.method_name_check and sig.method_name != METHODS[verb]:
            raise InvalidArgument(
                f"Expected {verb} signature method_name to be {METHODS[verb]}. "
                f"Was: {sig.method_name}"
            )
        mv.mark_used(sig.name)  # --signature_check=used protects what clients call
        return sig

    async def _run(
        self, mv: ModelVersion, sig: str, inputs: dict[str, Any], deadline: float | None
    ) -> dict[str, Any]:
        if deadline is None or mv.runner.enforces_deadlines:
            # One timer per request is enough: a second anyio scope cost 15-25 µs (profiled).
            return await mv.runner.submit(sig, inputs, deadline)
        with anyio.move_on_after(deadline - time.monotonic()) as scope:
            return await mv.runner.submit(sig, inputs, deadline)
        assert scope.cancelled_caught
        raise DeadlineExceeded("Deadline Exceeded")

    async def _predict(self, obj: dict[str, Any], target: Target, deadline: float | None) -> bytes:
        req = codec.parse_predict(obj)
        with self._registry().acquire(target.name, target.version, target.label) as mv:
            sig = self._signature(mv, req.signature_name, "predict")
            inputs = codec.to_tensors(req, sig)
            outputs = await self._run(mv, sig.name, inputs, deadline)
        return codec.encode_predict(outputs, req.columnar)

    async def _examples(
        self, verb: str, obj: dict[str, Any], target: Target, deadline: float | None
    ) -> bytes:
        sig_name, context, examples = codec.parse_examples(
            obj, "classify" if verb == "classify" else "regress"
        )
        with self._registry().acquire(target.name, target.version, target.label) as mv:
            sig = self._signature(mv, sig_name, verb)
            if verb == "classify":
                in_alias, classes, scores = codec.classify_io(sig)
            else:
                in_alias, out_alias = codec.regress_io(sig)
            serialized = mv.servable.serialize_examples(context, examples)
            outputs = await self._run(mv, sig.name, {in_alias: serialized}, deadline)
        if verb == "classify":
            return codec.encode_classify(
                outputs.get(classes) if classes else None, outputs.get(scores) if scores else None
            )
        return codec.encode_regress(outputs[out_alias])

    def _metadata(self, target: Target) -> bytes:
        with self._registry().acquire(target.name, target.version, target.label) as mv:
            cached = mv.cache.get("metadata")
            if cached is None:
                cached = codec.encode_json(
                    {
                        "model_spec": {
                            "name": target.name,
                            "signature_name": "",
                            "version": str(mv.id.version),
                        },
                        "metadata": mv.servable.metadata(),
                    }
                )
                mv.cache["metadata"] = cached
            return bytes(cached)

    def _status(self, target: Target) -> bytes:
        # TF Serving ignores a label in the status route and lists every version (QUIRK, kept).
        statuses = self._registry().status(target.name, target.version)
        return codec.encode_json({"model_version_status": [_status_json(s) for s in statuses]})


def _status_json(s: VersionStatus) -> dict[str, Any]:
    return {
        "version": str(s.version),
        "state": s.state.value,
        "status": {"error_code": s.error_code, "error_message": s.error_message},
    }


def _gunzip(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidArgument(f"Failed to decompress gzip body: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"Decompressed request body is larger than the limit of {limit} bytes"
        )
    return out
