"""TF Serving's REST API (`/v1/...`) as one raw ASGI handler, called before FastAPI.

Why raw ASGI: on this hardware FastAPI's per-request machinery costs more than the HTTP transport
and the model together (shared/PERFORMANCE.md), and `:predict` is the hot path. The app
(`app.main.HotserveApp`) hands `/v1` requests straight here, skipping Starlette's middleware
stack; FastAPI keeps everything else (docs, health, metrics). Paths are parsed by
`app.api.paths` (TF Serving's grammar, on the raw path), so a path FastAPI would route
differently still behaves like TFS.

Flow of a request (one direction): read body once (size-limited, gzip/deflate undone) -> codec
parse -> registry resolves and pins one version -> codec builds tensors against that version's
signature -> runner (batcher or direct) -> codec encodes -> bytes out, with Content-Length. The pin
is released before encoding.

Threads: everything runs on the event loop except CPU-heavy work of large requests. A body of at
least `RestOptions.offload_bytes` is parsed, turned into tensors (or serialized tf.Examples) in a
worker thread of the `decode` limiter, and outputs of at least `offload_elements` values are
encoded there too, so one large request does not stall every other client. Compressed bodies
are always inflated there (their size says little about the work). Small requests stay
inline: a thread hop costs more than their whole decode (scripts/bench/offload.py measures both).
"""

from __future__ import annotations

import logging
import math
import re
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
from anyio import to_thread

from app.api import codec, paths
from app.api.errors import http_status
from app.api.paths import VERBS, Route
from app.core.types import Signature, VersionStatus
from app.core.versions import ModelVersion
from app.errors import (
    Cancelled,
    Code,
    HotserveError,
    InvalidArgument,
    PayloadTooLarge,
)
from app.serving.service import Api, Serving
from app.serving.types import ModelRef

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

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
    # Bodies of at least this many bytes are decoded in a worker thread (see the module doc).
    offload_bytes: int = 64 * 1024
    # Outputs of at least this many values are encoded in a worker thread.
    offload_elements: int = 16 * 1024
    # Classify/regress requests with at least this many tf.Examples build them in the thread.
    offload_examples: int = 1024
    # How many large requests may decode/encode at once (the `decode` limiter).
    decode_threads: int = 2
    # --route_key_header, lowercased (ASGI header names are): a rollout's sticky routing key.
    route_key_header: bytes = b"x-route-key"


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


def is_v1(scope: Scope) -> bool:
    """Whether TFServingRest answers this request (TF Serving's `(?i)/v1/.*`, raw path)."""
    return scope["type"] == "http" and paths.is_v1(paths.raw_path(scope))


class TFServingRest:
    """ASGI handler for every `/v1/...` request (route with `is_v1`)."""

    def __init__(
        self,
        serving: Serving,
        options: RestOptions,
        observer: RequestObserver | None = None,
    ) -> None:
        self._serving = serving
        self.options = options
        self._observer = observer
        self._extra = CORS_HEADERS if options.cors else []
        self._decode_limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        seen = Seen()
        code: str = Code.OK
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
            code, status = Code.INTERNAL, 500
            body, headers = codec.encode_error("Internal error"), JSON_HEADERS + self._extra
        # TF Serving (libevent) sends a Content-Length; without one uvicorn would answer chunked.
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if self._observer is not None:
            self._observer.observe(seen.model, seen.api, code, time.perf_counter() - started)

    def _error(self, exc: HotserveError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        headers = JSON_HEADERS + self._extra
        if exc.code == Code.UNAVAILABLE:
            headers = [*headers, (b"retry-after", b"1")]
        return http_status(exc), codec.encode_error(exc.message), headers

    async def _dispatch(self, scope: Scope, receive: Receive, seen: Seen) -> tuple[int, bytes]:
        """Answer one /v1 request; `seen` learns the model and API as soon as the path parses,
        so failed requests are counted under their model too (as in TF Serving)."""
        method, raw = scope["method"], paths.raw_path(scope)
        if method == "OPTIONS":
            raise self._preflight(scope)
        try:
            route = paths.parse(method, raw)
        except InvalidArgument:
            seen.model = paths.model_name_hint(raw)  # TF Serving counts these under the model
            raise
        seen.model, seen.api = route.name, route.kind if route.kind in VERBS else ""
        if route.kind == "metadata":
            return 200, self._metadata(route, scope)
        if route.kind == "status":
            return 200, self._status(route)
        body = await self._read_body(scope, receive)
        return 200, await self._infer(route, body, scope)

    def _preflight(self, scope: Scope) -> Reply:
        origin = next((v for k, v in scope["headers"] if k == b"origin"), b"")
        ok = re.match(rb"https?://", origin) is not None
        return Reply(200 if ok else 400, b"")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.options.max_request_bytes
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
        if not encoding or not body or not (b"gzip" in encoding or b"deflate" in encoding):
            return body
        # Always in the thread: deflate expands up to ~1000:1, so a small compressed body can
        # still be megabytes of work.
        return await self._offload(_decompress, body, encoding, limit)

    def _big(self, body: bytes) -> bool:
        return len(body) >= self.options.offload_bytes

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread of the decode limiter, for the work of large requests (small
        ones call `fn` inline: no coroutine, no thread hop). In the thread, the work gives the
        loop back between its C calls (orjson, numpy, protobuf) and every few ms of Python, so
        other requests go on meanwhile; a single C call (orjson over a whole body) still holds
        the GIL for its duration."""
        if self._decode_limiter is None:  # made on first use: it needs the running loop
            self._decode_limiter = anyio.CapacityLimiter(max(self.options.decode_threads, 1))
        return await to_thread.run_sync(fn, *args, limiter=self._decode_limiter)

    def _deadline(self, scope: Scope) -> float | None:
        budget = self.options.timeout_ms / 1000 if self.options.timeout_ms > 0 else None
        for key, value in scope["headers"]:
            if key == TIMEOUT_HEADER:
                try:
                    hint = float(value)
                except ValueError:
                    hint = math.nan
                if not math.isfinite(hint):  # nan would poison every comparison after it
                    raise InvalidArgument("X-Request-Timeout must be a number of seconds")
                budget = hint if budget is None else min(budget, hint)
        return None if budget is None else time.monotonic() + budget

    def _ref(self, route: Route, scope: Scope) -> ModelRef:
        """The model the request names, with its routing key (`--route_key_header`) when it
        names neither a version nor a label and some rollout splits (`Serving.keyed`): only
        those requests may be split, so the others skip the header scan."""
        if route.version is not None or route.label is not None or not self._serving.keyed:
            return ModelRef(route.name, route.version, route.label)
        wanted = self.options.route_key_header
        for key, value in scope["headers"]:
            if key == wanted and value:  # an empty value is no key (not one shared bucket)
                return ModelRef(route.name, key=value.decode("latin-1"))
        return ModelRef(route.name)

    async def _infer(self, route: Route, body: bytes, scope: Scope) -> bytes:
        deadline = self._deadline(scope)
        ref = self._ref(route, scope)
        if route.kind == "predict":
            return await self._predict(ref, body, deadline)
        return await self._examples(route.kind, ref, body, deadline)

    def _signature(self, mv: ModelVersion, name: str, verb: Api) -> Signature:
        """The serving layer's lookup and method check, with the REST edge's wording."""
        return self._serving.signature(mv, name, verb, edge="REST")

    async def _predict(self, ref: ModelRef, body: bytes, deadline: float | None) -> bytes:
        heavy = self._big(body)
        # A malformed body is a 400 even for an unknown model: parse before resolving.
        req = await self._offload(_parse_predict, body) if heavy else _parse_predict(body)
        serving = self._serving
        with serving.pin(ref) as mv:
            sig = self._signature(mv, req.signature_name, "predict")
            if heavy:
                inputs = await self._offload(codec.to_tensors, req, sig)
            else:
                inputs = codec.to_tensors(req, sig)
            outputs = await serving.run(mv, sig, inputs, deadline, ref=ref)
        big_answer = _values(outputs.values()) >= self.options.offload_elements
        if big_answer:
            return await self._offload(codec.encode_predict, outputs, req.columnar)
        return codec.encode_predict(outputs, req.columnar)

    async def _examples(
        self, verb: str, ref: ModelRef, body: bytes, deadline: float | None
    ) -> bytes:
        heavy = self._big(body)
        if heavy:
            sig_name, context, examples = await self._offload(_parse_examples, body, verb)
        else:
            sig_name, context, examples = _parse_examples(body, verb)
        api: Api = "classify" if verb == "classify" else "regress"
        serving = self._serving
        with serving.pin(ref) as mv:
            sig = self._signature(mv, sig_name, api)
            serialize = mv.servable.serialize_examples
            if heavy or len(examples) >= self.options.offload_examples:
                serialized = await self._offload(serialize, context, examples)
            else:
                serialized = serialize(context, examples)
            if api == "classify":
                result = await serving.classify(mv, sig, serialized, deadline, ref=ref)
                return codec.encode_classify(result.classes, result.scores)
            values = await serving.regress(mv, sig, serialized, deadline, ref=ref)
        return codec.encode_regress(values)

    def _metadata(self, route: Route, scope: Scope) -> bytes:
        # With the routing key: a sticky client reads the signatures of the arm it lands on.
        with self._serving.pin(self._ref(route, scope)) as mv:
            cached = mv.cache.get("metadata")
            if cached is None:
                cached = codec.encode_json(
                    {
                        "model_spec": {
                            "name": route.name,
                            "signature_name": "",
                            "version": str(mv.id.version),
                        },
                        "metadata": {
                            "signature_def": {"signature_def": Serving.signature_defs(mv)}
                        },
                    }
                )
                mv.cache["metadata"] = cached
            return bytes(cached)

    def _status(self, route: Route) -> bytes:
        # TF Serving ignores a label in the status route and lists every version (QUIRK, kept).
        statuses = self._serving.status(route.name, route.version)
        return codec.encode_json({"model_version_status": [_status_json(s) for s in statuses]})


def _parse_predict(body: bytes) -> codec.PredictRequest:
    return codec.parse_predict(codec.parse_body(body))


def _parse_examples(body: bytes, verb: str) -> tuple[str, Any, list[Any]]:
    return codec.parse_examples(codec.parse_body(body), verb)  # type: ignore[arg-type]


def _values(arrays: Any) -> int:
    return sum(int(getattr(a, "size", 1)) for a in arrays)


def _status_json(s: VersionStatus) -> dict[str, Any]:
    return {
        "version": str(s.version),
        "state": s.state.value,
        "status": {"error_code": s.error_code, "error_message": s.error_message},
    }


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """Undo `Content-Encoding`. TF Serving gunzips when the header contains "gzip" (libevent
    request, StrContains) and passes anything else through; hotserve also inflates "deflate"
    (zlib or raw), which TF Serving would hand to the JSON parser (a 400)."""
    if b"gzip" in encoding:
        wbits, what = 16 + zlib.MAX_WBITS, "gzip"
    elif b"deflate" in encoding:
        # RFC 9110's deflate is zlib-wrapped; some clients send raw deflate: tell by the header.
        zlib_header = len(body) > 1 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
        what = "deflate"
    else:
        return body
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"Failed to decompress {what} body: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"Decompressed request body is larger than the limit of {limit} bytes"
        )
    return out
