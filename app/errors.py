"""The domain exception tree and THE list of error codes.

`Code` is the one home of the error codes hotserve speaks: TensorFlow's canonical status codes
(tensorflow/core/protobuf/error_codes.proto, in numeric order) plus hotserve's own extensions
(after them, with no TF number). Everything else derives from it: `code_name` (a TF numeric code
from the runtime -> Code), `error_for` (a Code -> the exception class that carries it), the HTTP
table in `app.api.errors` (checked to cover every Code), the metrics' `status` label and the
version status's `error_code`.

Every error hotserve raises on purpose is a `HotserveError` carrying one `Code` and a
TF-Serving-style message. No HTTP here.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Code(enum.StrEnum):
    """Error codes; a member compares equal to its name string ("INVALID_ARGUMENT")."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    # hotserve's own, not TF codes: keep them after the TF ones (numbering above is TF's).
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"

    @property
    def tf_number(self) -> int | None:
        """The numeric TF code (error_codes.proto), None for hotserve's own codes."""
        index = _ORDER.index(self)
        return index if index <= _LAST_TF else None


_ORDER = list(Code)
_LAST_TF = _ORDER.index(Code.UNAUTHENTICATED)


def code_name(number: int) -> Code:
    """The Code of a numeric TF status code (UNKNOWN when it is not one)."""
    return _ORDER[number] if 0 <= number <= _LAST_TF else Code.UNKNOWN


class HotserveError(Exception):
    """Base class. `message` is what a client sees in `{"error": message}`."""

    code: Code = Code.UNKNOWN
    # The one subclass that stands for each code (see `error_for`).
    _by_code: ClassVar[dict[Code, type[HotserveError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__ and cls.__dict__.get("_registers", True):
            HotserveError._by_code.setdefault(cls.code, cls)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def error_for(code: Code, message: str) -> HotserveError:
    """An exception carrying `code` (e.g. a TF runtime status kept as TF Serving keeps it)."""
    cls = HotserveError._by_code.get(code)
    if cls is not None:
        return cls(message)
    error = HotserveError(message)
    error.code = code
    return error


class InvalidArgument(HotserveError):
    code = Code.INVALID_ARGUMENT


class NotFound(HotserveError):
    code = Code.NOT_FOUND


class FailedPrecondition(HotserveError):
    """The request is well-formed but cannot be served in the current setup (TF Serving's use:
    e.g. a model whose outputs are not batch-major under batching). HTTP 400, not a fault."""

    code = Code.FAILED_PRECONDITION


class Unavailable(HotserveError):
    """The server cannot take the request now (queue full, shutting down); retry later."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(HotserveError):
    code = Code.DEADLINE_EXCEEDED


class ResourceExhausted(HotserveError):
    code = Code.RESOURCE_EXHAUSTED


class Unimplemented(HotserveError):
    code = Code.UNIMPLEMENTED


class Internal(HotserveError):
    """A real server or model fault (HTTP 500): never for a request the client can fix."""

    code = Code.INTERNAL


class Cancelled(HotserveError):
    code = Code.CANCELLED


class PayloadTooLarge(HotserveError):
    """A request body over the configured limit (hotserve's own; TF Serving has none)."""

    code = Code.PAYLOAD_TOO_LARGE


class LoadError(HotserveError):
    """A version failed to load, validate or warm up. `code` may be refined per instance."""

    code = Code.UNKNOWN
    _registers = False

    def __init__(self, message: str, code: Code | str = Code.UNKNOWN) -> None:
        super().__init__(message)
        self.code = Code(code)


class ConfigError(HotserveError):
    """A configuration (flags, models.config, batching parameters) is invalid."""

    code = Code.INVALID_ARGUMENT
    _registers = False
