"""The gRPC server's options, read as TF Serving reads them: UNIX socket, health service,
reflection, TLS from --ssl_config_file, message sizes, channel arguments, config reload,
metrics under entrypoint="GRPC", and start/stop with the app's lifespan."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from app.errors import ConfigError
from app.grpc.server import channel_arguments, server_options
from tests.grpc.conftest import GrpcServer, demo_config, start, stop
from tests.harness import REPO


def half_plus_two(x: list[float]) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "half_plus_two"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(x, np.float32)))
    return req


def test_channel_arguments_parse_like_tf_serving() -> None:
    assert channel_arguments("grpc.max_concurrent_streams=8, grpc.primary_user_agent=hs") == [
        ("grpc.max_concurrent_streams", 8),
        ("grpc.primary_user_agent", "hs"),
    ]
    with pytest.raises(ConfigError):
        channel_arguments("novalue")
    opts = dict(server_options_for("grpc.max_receive_message_length=1024"))
    assert opts["grpc.max_receive_message_length"] == 1024  # the user's value wins
    assert opts["grpc.max_send_message_length"] == 2**31 - 1  # TF Serving lifts 4 MiB


def server_options_for(args: str) -> list[tuple[str, object]]:
    from app.grpc.server import GrpcOptions

    return server_options(GrpcOptions(channel_arguments=args))


def test_large_message_beyond_grpc_default(demo: GrpcServer) -> None:
    """A 6 MiB request: over gRPC's 4 MiB default, accepted as by TF Serving."""
    xs = np.arange(6 * 1024 * 1024 // 4, dtype=np.float32)
    big = [("grpc.max_receive_message_length", 64 << 20)]  # the client's own limit, for the answer
    with grpc.insecure_channel(demo.target, options=big) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        resp = stub.Predict(half_plus_two(xs.tolist()), timeout=60)
    out = tf.make_ndarray(resp.outputs["y"])
    assert out.shape == xs.shape and out[-1] == 0.5 * xs[-1] + 3


def test_reflection_lists_tf_serving_services(demo: GrpcServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(demo.channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    [resp] = list(stub.ServerReflectionInfo(iter([req]), timeout=10))
    names = {s.name for s in resp.list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= names


def test_metrics_count_grpc_requests_under_grpc_entrypoint(demo: GrpcServer) -> None:
    demo.predict.Predict(half_plus_two([1.0]), timeout=10)
    text = httpx.get(f"{demo.url}/monitoring/prometheus/metrics", timeout=10).text
    assert (
        ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",'
        'model_name="half_plus_two"}'
    ) in text
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}' in text


def test_unix_socket_and_health_service(tmp_path: Path) -> None:
    sock = tmp_path / "grpc.sock"
    server = start(
        [
            f"--model_config_file={demo_config(tmp_path)}",
            f"--grpc_socket_path={sock}",
            "--enable_grpc_healthcheck_service=true",
        ],
        tmp_path / "server.log",
    )
    try:
        health = health_pb2_grpc.HealthStub(server.channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            out = stub.Predict(half_plus_two([2.0]), timeout=10)
            assert tf.make_ndarray(out.outputs["y"]).tolist() == [4.0]
    finally:
        stop(server)
    # Stopped by the lifespan, in order, before the models were unloaded.
    log = server.proc.log()
    assert log.index("gRPC server stopped") < log.rindex("UNLOADING")


def test_health_turns_not_serving_at_the_signal_while_the_grace_still_serves(
    tmp_path: Path,
) -> None:
    server = start(
        [
            f"--model_config_file={demo_config(tmp_path)}",
            "--enable_grpc_healthcheck_service=true",
            "--shutdown_grace_seconds=5",
        ],
        tmp_path / "server.log",
    )
    try:
        health = health_pb2_grpc.HealthStub(server.channel)
        check = health_pb2.HealthCheckRequest(service="")
        assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert server.proc.proc is not None
        server.proc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 4  # inside the 5 s grace: the server still answers
        status = health_pb2.HealthCheckResponse.SERVING
        while status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            status = health.Check(check, timeout=5).status
            time.sleep(0.02)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        # ...while predictions are still served during the grace, as REST is.
        out = server.predict.Predict(half_plus_two([2.0]), timeout=10)
        assert tf.make_ndarray(out.outputs["y"]).tolist() == [4.0]
    finally:
        stop(server)
    assert "gRPC health: NOT_SERVING (shutdown began)" in server.proc.log()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_from_ssl_config_file(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ssl = tmp_path / "ssl.config"
    ssl.write_text(
        f"server_key: {key.read_text()!r}\nserver_cert: {cert.read_text()!r}\n"
        "client_verify: false\n".replace("'", '"')
    )
    server = start(
        [f"--model_config_file={demo_config(tmp_path)}", f"--ssl_config_file={ssl}"],
        tmp_path / "server.log",
    )
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(server.target, creds) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            out = stub.Predict(half_plus_two([2.0]), timeout=10)
            assert tf.make_ndarray(out.outputs["y"]).tolist() == [4.0]
        with pytest.raises(grpc.RpcError):
            server.predict.Predict(half_plus_two([2.0]), timeout=5)  # plaintext is refused
    finally:
        stop(server)


def test_reload_config_replaces_the_model_set(tmp_path: Path) -> None:
    only_mlp = tmp_path / "mlp.config"
    only_mlp.write_text(
        f'model_config_list {{ config {{ name: "mlp" base_path: "{REPO / "models" / "mlp"}" '
        'model_platform: "tensorflow" } }'
    )
    server = start([f"--model_config_file={only_mlp}"], tmp_path / "server.log")
    try:
        with pytest.raises(grpc.RpcError) as info:
            server.predict.Predict(half_plus_two([1.0]), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        req = model_management_pb2.ReloadConfigRequest()
        entry = req.config.model_config_list.config.add()
        entry.name = "half_plus_two"
        entry.base_path = str(REPO / "models" / "half_plus_two")
        entry.model_platform = "tensorflow"
        resp = server.model.HandleReloadConfigRequest(req, timeout=60)
        assert resp.status.error_code == 0
        out = server.predict.Predict(half_plus_two([1.0]), timeout=10)
        assert tf.make_ndarray(out.outputs["y"]).tolist() == [3.5]
        # mlp is gone from the new config: unloaded, as a models.config reload does.
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "mlp"
        states = server.model.GetModelStatus(status, timeout=10).model_version_status
        assert [s.state for s in states] in (
            [get_model_status_pb2.ModelVersionStatus.END],
            [get_model_status_pb2.ModelVersionStatus.UNLOADING],
        )
        # TF Serving's answers for bad configs: the RPC status and the response's status.
        dup = model_management_pb2.ReloadConfigRequest()
        dup.config.model_config_list.config.add().CopyFrom(entry)
        dup.config.model_config_list.config.add().CopyFrom(entry)
        with pytest.raises(grpc.RpcError) as info:
            server.model.HandleReloadConfigRequest(dup, timeout=10)
        err: object = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert err.details() == (  # type: ignore[attr-defined]
            "Illegal to list model half_plus_two multiple times in config list"
        )
        custom = model_management_pb2.ReloadConfigRequest(
            config=model_server_config_pb2.ModelServerConfig()
        )
        with pytest.raises(grpc.RpcError) as info:
            server.model.HandleReloadConfigRequest(custom, timeout=10)
        assert "Only ModelConfigList is currently supported" in info.value.details()  # type: ignore[attr-defined]
        # The bad reloads changed nothing.
        out = server.predict.Predict(half_plus_two([1.0]), timeout=10)
        assert tf.make_ndarray(out.outputs["y"]).tolist() == [3.5]
    finally:
        stop(server)


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## gRPC") : text.index("## Configuration")]


def test_readme_grpcurl_requests(demo: GrpcServer) -> None:
    """Every grpcurl body in the README, through protobuf's JSON mapping (grpcurl's), answers."""
    import re

    from google.protobuf import descriptor_pool, json_format, message_factory

    calls = re.findall(
        r"-d '(.*?)' \\\s+localhost:8500 tensorflow\.serving\.(\w+)/(\w+)", readme_section(), re.S
    )
    assert len(calls) == 4
    pool = descriptor_pool.Default()
    for body, service, method in calls:
        stub = demo.predict if service == "PredictionService" else demo.model
        desc = pool.FindServiceByName(f"tensorflow.serving.{service}").methods_by_name[method]
        request = json_format.Parse(body, message_factory.GetMessageClass(desc.input_type)())
        response = getattr(stub, method)(request, timeout=10)
        assert response.ByteSize() > 0, method


def test_readme_python_example(demo: GrpcServer, capsys: pytest.CaptureFixture[str]) -> None:
    section = readme_section()
    code = section[section.index("```python") + len("```python") : section.index("```\n\nWith")]
    exec(compile(code.replace("localhost:8500", demo.target), "README", "exec"), {})
    assert capsys.readouterr().out.split() == ["[3.5", "4.", "5.5]", "2"]


def test_workers_share_the_grpc_port(tmp_path: Path) -> None:
    """--workers 2: each worker binds the gRPC port with SO_REUSEPORT (grpcio's default) and
    answers; the kernel spreads connections over them."""
    server = start(
        [f"--model_config_file={demo_config(tmp_path)}", "--workers=2"], tmp_path / "server.log"
    )
    try:
        for _ in range(8):  # a fresh connection each time, so both workers are likely asked
            with grpc.insecure_channel(server.target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                out = stub.Predict(half_plus_two([2.0]), timeout=30)
                assert tf.make_ndarray(out.outputs["y"]).tolist() == [4.0]
    finally:
        stop(server)
    assert server.proc.log().count("gRPC serving on") == 2
