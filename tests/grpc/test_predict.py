"""Predict and GetModelMetadata over a real gRPC socket with the official stubs, against REST."""

from __future__ import annotations

import httpx
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.grpc.conftest import GrpcServer


def predict_request(model: str, **inputs: np.ndarray) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    for alias, arr in inputs.items():
        req.inputs[alias].CopyFrom(tf.make_tensor_proto(arr))
    return req


def test_predict_half_plus_two_matches_rest(demo: GrpcServer) -> None:
    xs = np.array([1.0, 2.0, 5.0], dtype=np.float32)
    resp = demo.predict.Predict(predict_request("half_plus_two", x=xs), timeout=10)
    got = tf.make_ndarray(resp.outputs["y"])
    rest = httpx.post(f"{demo.url}/v1/models/half_plus_two:predict", json={"instances": xs.tolist()})
    assert got.tolist() == rest.json()["predictions"] == [3.5, 4.0, 5.5]
    assert resp.model_spec.name == "half_plus_two"
    assert resp.model_spec.version.value == 2
    assert resp.model_spec.signature_name == "serving_default"
