"""The one table: error `Code` -> HTTP status (TF Serving's model_servers/http_server.cc,
ToHTTPStatusCode). It covers every member of `app.errors.Code` (checked at import), so a new
code cannot silently become a 500."""

from __future__ import annotations

from app.errors import Code, HotserveError

HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
    # hotserve's own: TF Serving has no body limit.
    Code.PAYLOAD_TOO_LARGE: 413,
}
if set(HTTP_STATUS) != set(Code):  # pragma: no cover - a programming error, caught by any test
    raise RuntimeError(f"HTTP_STATUS misses {sorted(set(Code) - set(HTTP_STATUS))}")


def http_status(error: HotserveError) -> int:
    return HTTP_STATUS[error.code]
