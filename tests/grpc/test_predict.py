"""Predict, GetModelMetadata and GetModelStatus over a real gRPC socket with the official
tensorflow-serving-api stubs, answered like REST answers the same request (same server)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from tests.grpc.conftest import GrpcServer

XS = [1.0, 2.0, 5.0]


def predict_request(
    model: str, version: int | None = None, label: str | None = None, **inputs: np.ndarray
) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for alias, arr in inputs.items():
        req.inputs[alias].CopyFrom(tf.make_tensor_proto(arr))
    return req


def rest_predict(url: str, path: str, body: object) -> object:
    r = httpx.post(f"{url}/v1/models/{path}:predict", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_predict_half_plus_two_matches_rest(demo: GrpcServer) -> None:
    xs = np.array(XS, dtype=np.float32)
    resp = demo.predict.Predict(predict_request("half_plus_two", x=xs), timeout=10)
    got = tf.make_ndarray(resp.outputs["y"])
    rest = rest_predict(demo.url, "half_plus_two", {"instances": XS})
    assert rest == {"predictions": got.tolist()}
    assert got.tolist() == [3.5, 4.0, 5.5]
    # TF Serving echoes the resolved spec and answers with typed fields (AsProtoField).
    assert resp.model_spec.name == "half_plus_two"
    assert resp.model_spec.version.value == 2
    assert resp.model_spec.signature_name == "serving_default"
    assert list(resp.outputs["y"].float_val) == [3.5, 4.0, 5.5]
    assert resp.outputs["y"].dtype == types_pb2.DT_FLOAT


def test_predict_mlp_matches_rest_bit_for_bit(demo: GrpcServer) -> None:
    rows = np.random.default_rng(7).random((4, 784), dtype=np.float32)
    resp = demo.predict.Predict(predict_request("mlp", images=rows), timeout=10)
    [alias] = resp.outputs
    got = tf.make_ndarray(resp.outputs[alias])
    rest = rest_predict(demo.url, "mlp", {"instances": rows.tolist()})
    assert isinstance(rest, dict)
    want = np.array([r if not isinstance(r, dict) else r[alias] for r in rest["predictions"]])
    assert got.shape == (4, 10)
    np.testing.assert_array_equal(got, want.astype(got.dtype))


@pytest.mark.parametrize(
    ("fill", "want"),
    [
        ({"float_val": [1.0, 2.0, 5.0]}, [3.5, 4.0, 5.5]),  # typed field
        ({"float_val": [1.0]}, [3.5, 3.5, 3.5]),  # one value fills the shape (TF's rule)
        ({"float_val": [1.0, 2.0]}, [3.5, 4.0, 4.0]),  # the last value repeats
        ({}, [3.0, 3.0, 3.0]),  # no values: zeros
        ({"tensor_content": np.array(XS, np.float32).tobytes()}, [3.5, 4.0, 5.5]),
    ],
)
def test_tensor_encodings(demo: GrpcServer, fill: dict[str, object], want: list[float]) -> None:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "half_plus_two"
    x = req.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add().size = 3
    for field, value in fill.items():
        if field == "tensor_content":
            x.tensor_content = value  # type: ignore[assignment]
        else:
            getattr(x, field).extend(value)
    resp = demo.predict.Predict(req, timeout=10)
    assert tf.make_ndarray(resp.outputs["y"]).tolist() == want


def test_scalar_input(demo: GrpcServer) -> None:
    resp = demo.predict.Predict(predict_request("half_plus_two", x=np.float32(4.0)), timeout=10)
    out = tf.make_ndarray(resp.outputs["y"])
    assert out.shape == () and float(out) == 5.0


def test_version_and_label_select_the_version(demo: GrpcServer) -> None:
    xs = np.array([1.0], dtype=np.float32)
    v1 = demo.predict.Predict(predict_request("half_plus_two", version=1, x=xs), timeout=10)
    lab = demo.predict.Predict(predict_request("half_plus_two", label="stable", x=xs), timeout=10)
    assert tf.make_ndarray(v1.outputs["y"]).tolist() == [2.5]
    assert tf.make_ndarray(lab.outputs["y"]).tolist() == [2.5]
    assert v1.model_spec.version.value == lab.model_spec.version.value == 1
    rest = rest_predict(demo.url, "half_plus_two/labels/stable", {"instances": [1.0]})
    assert rest == {"predictions": [2.5]}


def test_output_filter(demo: GrpcServer) -> None:
    req = predict_request("half_plus_two", x=np.array(XS, np.float32))
    req.output_filter.append("y")
    resp = demo.predict.Predict(req, timeout=10)
    assert list(resp.outputs) == ["y"]


def test_metadata_matches_rest(demo: GrpcServer) -> None:
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "half_plus_two"
    req.metadata_field.append("signature_def")
    resp = demo.predict.GetModelMetadata(req, timeout=10)
    assert resp.model_spec.name == "half_plus_two"
    assert resp.model_spec.version.value == 2
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sdm)  # packed as TF Serving packs it
    assert set(sdm.signature_def) >= {"serving_default", "regress_x_to_y", "classify_x_to_y"}
    rest = httpx.get(f"{demo.url}/v1/models/half_plus_two/metadata", timeout=10).json()
    as_json = json_format.MessageToDict(
        sdm, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert as_json == rest["metadata"]["signature_def"]


def test_status_matches_rest(demo: GrpcServer) -> None:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "half_plus_two"
    resp = demo.model.GetModelStatus(req, timeout=10)
    got = [
        (
            s.version,
            get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
            s.status.error_code,
        )
        for s in resp.model_version_status
    ]
    rest = httpx.get(f"{demo.url}/v1/models/half_plus_two", timeout=10).json()
    want = [(int(s["version"]), s["state"], 0) for s in rest["model_version_status"]]
    assert got == want == [(2, "AVAILABLE", 0), (1, "AVAILABLE", 0)]
    req.model_spec.version.value = 1
    one = demo.model.GetModelStatus(req, timeout=10)
    assert [s.version for s in one.model_version_status] == [1]
