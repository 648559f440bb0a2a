"""GetModelMetadata's payload: the SignatureDefMap packed in an Any under "signature_def".

get_model_metadata_impl.cc: `metadata_field` must name at least one field and only
"signature_def" is known (INVALID_ARGUMENT otherwise). The serving layer hands every
SignatureDef as proto3 JSON (plain data); it is parsed back into TF's protos here, losslessly.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from app.errors import InvalidArgument

SIGNATURE_DEF = "signature_def"


def check_fields(fields: list[str]) -> None:
    if not fields:
        raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF:
            raise InvalidArgument(f"Metadata field {field} is not supported")


def packed_signature_defs(defs: dict[str, Any]) -> Any:
    """An Any holding tensorflow.serving.SignatureDefMap."""
    sdm = get_model_metadata_pb2.SignatureDefMap()
    json_format.ParseDict({"signature_def": defs}, sdm)
    packed = any_pb2.Any()
    packed.Pack(sdm)
    return packed
