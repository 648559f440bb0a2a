"""The one table: domain error code -> gRPC status code (TF's canonical codes are gRPC's).

Messages longer than 1024 characters are cut as TF Serving's ToGRPCStatus cuts them
(grpc_status_util.cc): the first 1024 characters, then "...TRUNCATED".
"""

from __future__ import annotations

import grpc

from app.errors import HotserveError

GRPC_STATUS: dict[str, grpc.StatusCode] = {
    code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK
}
# hotserve's own code (a REST body limit) has no TF twin; gRPC's own limit answers this code.
GRPC_STATUS["PAYLOAD_TOO_LARGE"] = grpc.StatusCode.RESOURCE_EXHAUSTED
MESSAGE_LIMIT = 1024


def grpc_status(error: HotserveError) -> grpc.StatusCode:
    return GRPC_STATUS.get(error.code, grpc.StatusCode.UNKNOWN)


def grpc_message(message: str) -> str:
    if len(message) > MESSAGE_LIMIT:
        return message[:MESSAGE_LIMIT] + "...TRUNCATED"
    return message
