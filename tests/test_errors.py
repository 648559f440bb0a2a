"""The one list of error codes and what derives from it."""

from __future__ import annotations

import pytest

from app import errors
from app.api.errors import HTTP_STATUS, http_status
from app.errors import Code


def test_tf_numbers_follow_error_codes_proto() -> None:
    assert Code.OK.tf_number == 0
    assert Code.INVALID_ARGUMENT.tf_number == 3
    assert Code.FAILED_PRECONDITION.tf_number == 9
    assert Code.UNAUTHENTICATED.tf_number == 16
    assert Code.PAYLOAD_TOO_LARGE.tf_number is None
    assert [errors.code_name(n) for n in range(17)] == [c for c in Code if c.tf_number is not None]
    assert errors.code_name(99) == Code.UNKNOWN and errors.code_name(-1) == Code.UNKNOWN


def test_every_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(Code)
    assert all(isinstance(c, str) and c == c.value for c in Code)  # "INVALID_ARGUMENT" == Code


@pytest.mark.parametrize(
    ("code", "cls", "status"),
    [
        (Code.INVALID_ARGUMENT, errors.InvalidArgument, 400),
        (Code.FAILED_PRECONDITION, errors.FailedPrecondition, 400),
        (Code.NOT_FOUND, errors.NotFound, 404),
        (Code.UNAVAILABLE, errors.Unavailable, 503),
        (Code.INTERNAL, errors.Internal, 500),
        (Code.OUT_OF_RANGE, errors.HotserveError, 400),  # TF keeps OUT_OF_RANGE; so do we
        (Code.ABORTED, errors.HotserveError, 409),
        (Code.DATA_LOSS, errors.HotserveError, 500),
        (Code.UNKNOWN, errors.HotserveError, 500),
    ],
)
def test_error_for_keeps_the_code(code: Code, cls: type[errors.HotserveError], status: int) -> None:
    exc = errors.error_for(code, "boom")
    assert type(exc) is cls and exc.code == code and exc.message == "boom"
    assert http_status(exc) == status


def test_load_error_takes_a_code_by_name() -> None:
    assert errors.LoadError("x", "DATA_LOSS").code is Code.DATA_LOSS  # names are checked
    with pytest.raises(ValueError):
        errors.LoadError("x", "NO_SUCH_CODE")
    assert errors.ConfigError("x").code == "INVALID_ARGUMENT"
