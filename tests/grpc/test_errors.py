"""Every error class answers with the gRPC status code and message TF Serving uses.

Sources: predict_util.cc, tensorflow/cc/saved_model/util.cc, classifier.cc, regressor.cc,
multi_inference.cc, get_model_metadata_impl.cc, get_model_status_impl.cc, server_core.cc.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from app.main import create_app
from app.settings import Settings
from tests.fakes import SlowLoader
from tests.grpc.conftest import GrpcServer
from tests.harness import free_port, threaded_server


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details()


def predict(model: str = "half_plus_two", signature: str = "", **inputs: Any) -> Any:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    for alias, value in inputs.items():
        req.inputs[alias].CopyFrom(
            value if not isinstance(value, np.ndarray) else tf.make_tensor_proto(value)
        )
    return req


X = np.array([1.0, 2.0], np.float32)


def test_unknown_model_version_and_label(demo: GrpcServer) -> None:
    p = demo.predict.Predict
    assert code_of(lambda: p(predict("nope", x=X), timeout=10)) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )
    req = predict(x=X)
    req.model_spec.version.value = 7
    assert code_of(lambda: p(req, timeout=10)) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(half_plus_two, 7)",
    )
    req = predict(x=X)
    req.model_spec.version_label = "canary"
    assert code_of(lambda: p(req, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: canary",
    )
    assert code_of(lambda: p(predict_pb2.PredictRequest(), timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )


def test_unknown_signature_predict_vs_classify(demo: GrpcServer) -> None:
    """Predict answers FAILED_PRECONDITION, Classify/Regress INVALID_ARGUMENT (TF Serving)."""
    assert code_of(lambda: demo.predict.Predict(predict(signature="nah", x=X), timeout=10)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nah" not found.',
    )
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "half_plus_two"
    req.model_spec.signature_name = "nah"
    req.input.example_list.examples.add()
    assert code_of(lambda: demo.predict.Classify(req, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "No signature was found with the name: nah",
    )


def test_bad_inputs(demo: GrpcServer) -> None:
    p = demo.predict.Predict
    code, msg = code_of(lambda: p(predict(x=X, extra=X), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert msg == (
        "input size does not match signature: 2!=1 len({extra,x}) != len({x}). "
        "Sent extra: {extra}. Missing but required: {}."
    )
    code, msg = code_of(lambda: p(predict(y=X), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert msg.startswith("Signature input alias: x(feed name: x:0) not found in request")
    broken = tf.make_tensor_proto(X)
    broken.tensor_content = b"\x00" * 5  # not a whole number of floats
    assert code_of(lambda: p(predict(x=broken), timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: x",
    )
    code, msg = code_of(lambda: p(predict(x=np.array([b"a"], dtype=object)), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # the model's own dtype check
    req = predict(x=X)
    req.output_filter.extend(["y", "y"])
    assert code_of(lambda: p(req, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate output tensor alias: y",
    )
    req = predict(x=X)
    req.output_filter.append("z")
    assert code_of(lambda: p(req, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}.",
    )


def test_classify_regress_on_the_wrong_signature(demo: GrpcServer) -> None:
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "half_plus_two"
    req.model_spec.signature_name = "classify_x_to_y"  # output "scores", not "outputs"
    req.input.example_list.examples.add()
    code, msg = code_of(lambda: demo.predict.Regress(req, timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert msg.startswith("No regression outputs found in SignatureDef: ")
    empty = regression_pb2.RegressionRequest()
    empty.model_spec.name = "half_plus_two"
    empty.model_spec.signature_name = "regress_x_to_y"
    assert code_of(lambda: demo.predict.Regress(empty, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Input is empty.",
    )


def test_multi_inference_errors(demo: GrpcServer) -> None:
    req = inference_pb2.MultiInferenceRequest()
    req.input.example_list.examples.add()
    for name in ("half_plus_two", "mlp"):
        task = req.tasks.add()
        task.model_spec.name = name
        task.method_name = "tensorflow/serving/regress"
    assert code_of(lambda: demo.predict.MultiInference(req, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    )
    del req.tasks[1]
    req.tasks[0].model_spec.signature_name = "regress_x_to_y"
    req.tasks[0].method_name = "tensorflow/serving/predict"
    assert code_of(lambda: demo.predict.MultiInference(req, timeout=10)) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature method_name: tensorflow/serving/predict",
    )


def test_metadata_and_status_errors(demo: GrpcServer) -> None:
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "half_plus_two"
    assert code_of(lambda: demo.predict.GetModelMetadata(req, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    req.metadata_field.append("signature_def")
    req.model_spec.name = "nope"
    assert code_of(lambda: demo.predict.GetModelMetadata(req, timeout=10))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    assert code_of(lambda: demo.model.GetModelStatus(status, timeout=10)) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )
    status.model_spec.name = "half_plus_two"
    status.model_spec.version.value = 9
    assert code_of(lambda: demo.model.GetModelStatus(status, timeout=10)) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 9 of model half_plus_two",
    )


# ---- deadlines and full queues, on an injected slow model -----------------------------------


@pytest.fixture
def slow(
    tmp_path: Path,
) -> Iterator[tuple[prediction_service_pb2_grpc.PredictionServiceStub, SlowLoader]]:
    base = tmp_path / "slow"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"fake")
    batching = tmp_path / "batching.pbtxt"
    batching.write_text(
        "max_batch_size { value: 1 }\nmax_enqueued_batches { value: 1 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    loader = SlowLoader(0.5)
    port = free_port()
    settings = Settings(
        model_name="slow",
        model_base_path=str(base),
        enable_batching=True,
        batching_parameters_file=str(batching),
        host="127.0.0.1",
        port=port,
    )
    with (
        threaded_server(create_app(settings, loader=loader)),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel), loader


def slow_request(x: float) -> Any:
    return predict("slow", x=np.array([x], np.float32))


def test_deadline_exceeded_and_expired_work_never_runs(slow: Any) -> None:
    stub, loader = slow
    busy = stub.Predict.future(slow_request(1.0), timeout=10)
    deadline = time.monotonic() + 5
    while not loader.servables[0].seen and time.monotonic() < deadline:
        time.sleep(0.01)  # polling: the model is now busy for ~0.5 s
    code, _ = code_of(lambda: stub.Predict(slow_request(42.0), timeout=0.1))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert tf.make_ndarray(busy.result().outputs["y"]).tolist() == [2.0]
    stub.Predict(slow_request(3.0), timeout=10)  # runs after the expired one would have
    assert 42.0 not in loader.servables[0].seen


def test_full_queue_is_unavailable(slow: Any) -> None:
    stub, _ = slow
    futures = [stub.Predict.future(slow_request(float(i)), timeout=30) for i in range(6)]
    codes = []
    for f in futures:
        try:
            f.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                assert "queue to which this task was submitted is full" in exc.details()
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.UNAVAILABLE in codes, codes


def test_an_input_of_another_dtype_is_refused_as_tensorflow_refuses_it(demo: GrpcServer) -> None:
    """TF Serving feeds the request's tensor as sent; TensorFlow's call frame refuses a dtype
    other than the placeholder's: INVALID_ARGUMENT "Expects arg[0] to be float but double is
    provided" (a float64 numpy array through tf.make_tensor_proto is the common case).
    hotserve must not cast it silently (REST casts: JSON numbers carry no dtype)."""
    p = demo.predict.Predict
    for sent, name in ((np.array([1.0]), "double"), (np.array([1, 2], np.int32), "int32")):
        assert code_of(lambda sent=sent: p(predict(x=sent), timeout=10)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Expects arg[0] to be float but {name} is provided",
        )


def test_big_tensors_are_converted_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop serves REST and every other gRPC call: a request whose tensors decode to 64 KiB
    or more, or whose outputs hold 16 Ki values or more, converts them in a worker thread (a
    10^8-element request held the loop for 11 s before); small ones stay inline (no hop)."""
    import asyncio

    from app.grpc import service

    seen: list[tuple[str, bool]] = []

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def decode(request: Any) -> Any:
        seen.append(("decode", on_loop()))
        return real_decode(request)

    def encode(outputs: Any) -> Any:
        seen.append(("encode", on_loop()))
        return real_encode(outputs)

    real_decode, real_encode = service._decode, service._encode
    monkeypatch.setattr(service, "_decode", decode)
    monkeypatch.setattr(service, "_encode", encode)
    base = tmp_path / "fast"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"fake")
    port = free_port()
    settings = Settings(model_name="fast", model_base_path=str(base), host="127.0.0.1", port=port)
    with (
        threaded_server(create_app(settings, loader=SlowLoader(0.0))),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        small = stub.Predict(predict("fast", x=np.array([1.0], np.float32)), timeout=30)
        assert tf.make_ndarray(small.outputs["y"]).tolist() == [2.0]
        assert seen == [("decode", True), ("encode", True)]
        seen.clear()
        xs = np.linspace(0.5, 1.5, 256 * 1024, dtype=np.float32)  # 1 MiB in, 256 Ki out
        big = stub.Predict(predict("fast", x=xs), timeout=30)
        np.testing.assert_array_equal(tf.make_ndarray(big.outputs["y"]), xs * 2)
        assert seen == [("decode", False), ("encode", False)]
