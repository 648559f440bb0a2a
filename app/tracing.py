"""Request IDs, W3C trace context and the access log, for every HTTP request (both `/v1` and the
FastAPI routes), as one raw ASGI wrapper in front of the app.

- `X-Request-ID`: taken from the request when it is 1-128 printable ASCII characters (letters,
  digits, `-_.:/+=@`), else a new 32-hex-digit ID; returned on the response either way.
- `traceparent` (W3C Trace Context, version 00): passed through (returned on the response
  unchanged) when well formed; its trace-id goes into the log lines. Malformed ones are ignored.
- Both sit in a `contextvars.ContextVar` for the life of the request, so every log line written
  while handling it (in the request's task, and in worker threads, which anyio runs in a copy of
  the context) carries them: `app.logs` reads `current()` in its filter.
- The access log (`--access_log`, logger `hotserve.access`): one line per request with method,
  path, status, bytes and milliseconds. When off it costs nothing: no timing, no wrapper state.
Cost on the hot path: a scan of the request's header list, `os.urandom(16).hex()` (or the
client's ID), a context variable set and reset, and one header pair appended to the response
start: a few µs a request, measured by scripts/bench/ops_cost.py.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("hotserve.access")

MAX_ID_CHARS = 128
_ID_OK = re.compile(rb"[A-Za-z0-9\-_.:/+=@]{1,128}")
_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    trace_id: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("hotserve_request", default=None)


def current() -> RequestContext | None:
    """The request being handled in this context (None outside a request)."""
    return _current.get()


def loggable(text: str) -> str:
    """`text` (a path, a name from a request) safe to put in a text log line: with a control
    character in it (a newline could forge a whole log line), escaped as Python would."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _request_id(value: bytes | None) -> bytes:
    if value is not None and _ID_OK.fullmatch(value):
        return value
    return os.urandom(16).hex().encode()  # as random as uuid4().hex, a sixth of the cost


def _traceparent(value: bytes | None) -> tuple[bytes | None, str | None]:
    """The header to pass through and its trace-id, or (None, None) when malformed."""
    if value is None:
        return None, None
    value = value.strip().lower()
    m = _TRACEPARENT.fullmatch(value)
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None, None
    return value, m.group(1).decode()


class Tracing:
    """The ASGI wrapper: `await tracing(scope, receive, send)` around `app`."""

    def __init__(self, app: ASGIApp, access: bool) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid_in = tp_in = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid_in = value
            elif key == b"traceparent":
                tp_in = value
        rid = _request_id(rid_in)
        traceparent, trace_id = _traceparent(tp_in)
        extra = [(b"x-request-id", rid)]
        if traceparent is not None:
            extra.append((b"traceparent", traceparent))
        token = _current.set(RequestContext(rid.decode(), trace_id))
        try:
            if self.access:
                await self._logged(scope, receive, send, extra)
                return

            async def tagged(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            await self.app(scope, receive, tagged)
        finally:
            _current.reset(token)

    async def _logged(
        self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> None:
        started = time.perf_counter()
        status = 0
        size = 0

        async def tagged(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            client = scope.get("client")
            access_log.info(
                '%s "%s %s" %d %d %.2fms',
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                loggable(scope["path"]),
                status,
                size,
                (time.perf_counter() - started) * 1000,
            )
