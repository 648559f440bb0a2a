"""Classify, Regress and MultiInference over gRPC: the numbers REST gives for the same examples."""

from __future__ import annotations

import httpx
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)

from tests.grpc.conftest import GrpcServer

XS = [1.0, 2.0, 5.0]


def example(x: float) -> tf.train.Example:
    return tf.train.Example(
        features=tf.train.Features(
            feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
        )
    )


def fill_input(inp: input_pb2.Input, xs: list[float]) -> None:
    for x in xs:
        inp.example_list.examples.add().CopyFrom(example(x))


def rest(url: str, verb: str, signature: str, xs: list[float]) -> list[object]:
    body = {"signature_name": signature, "examples": [{"x": x} for x in xs]}
    r = httpx.post(f"{url}/v1/models/half_plus_two:{verb}", json=body, timeout=10)
    assert r.status_code == 200, r.text
    results: list[object] = r.json()["results"]
    return results


def test_classify_matches_rest(demo: GrpcServer) -> None:
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "half_plus_two"
    req.model_spec.signature_name = "classify_x_to_y"
    fill_input(req.input, XS)
    resp = demo.predict.Classify(req, timeout=10)
    got = [[[c.label, c.score] for c in row.classes] for row in resp.result.classifications]
    assert (
        got
        == rest(demo.url, "classify", "classify_x_to_y", XS)
        == [
            [["", 3.5]],
            [["", 4.0]],
            [["", 5.5]],
        ]
    )
    assert resp.model_spec.version.value == 2
    assert resp.model_spec.signature_name == "classify_x_to_y"


def test_regress_matches_rest(demo: GrpcServer) -> None:
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "half_plus_two"
    req.model_spec.signature_name = "regress_x_to_y"
    fill_input(req.input, XS)
    resp = demo.predict.Regress(req, timeout=10)
    got = [r.value for r in resp.result.regressions]
    assert got == rest(demo.url, "regress", "regress_x_to_y", XS) == [3.5, 4.0, 5.5]


def test_regress_with_context(demo: GrpcServer) -> None:
    """ExampleListWithContext: the context's features join every example; the example wins."""
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "half_plus_two"
    req.model_spec.signature_name = "regress_x_to_y"
    lwc = req.input.example_list_with_context
    lwc.context.CopyFrom(example(100.0))
    lwc.examples.add().CopyFrom(example(2.0))
    lwc.examples.add()  # no x of its own: takes the context's
    resp = demo.predict.Regress(req, timeout=10)
    assert [r.value for r in resp.result.regressions] == [4.0, 53.0]


@pytest.mark.parametrize("version", [1, 2])
def test_multi_inference(demo: GrpcServer, version: int) -> None:
    req = inference_pb2.MultiInferenceRequest()
    for sig, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y", "tensorflow/serving/regress"),
    ):
        task = req.tasks.add()
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = sig
        task.model_spec.version.value = version
        task.method_name = method
    fill_input(req.input, XS)
    resp = demo.predict.MultiInference(req, timeout=10)
    classify, regress = resp.results
    scores = [row.classes[0].score for row in classify.classification_result.classifications]
    values = [r.value for r in regress.regression_result.regressions]
    bias = 1.0 + version
    assert scores == values == [0.5 * x + bias for x in XS]
    assert classify.model_spec.version.value == regress.model_spec.version.value == version
    assert regress.model_spec.signature_name == "regress_x_to_y"
