"""A real `python -m app` serving the demo models over gRPC and REST, for the gRPC edge tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tests.harness import REPO, ServerProcess, free_port, models_config, wait_all_available

METRICS_PATH = "/monitoring/prometheus/metrics"


@dataclass
class GrpcServer:
    proc: ServerProcess
    target: str
    channel: grpc.Channel
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    model: model_service_pb2_grpc.ModelServiceStub

    @property
    def url(self) -> str:
        return self.proc.url


def demo_config(tmp: Path) -> Path:
    """The demo models, half_plus_two with both versions and a label (models/README.md)."""
    cfg = tmp / "models.config"
    cfg.write_text(
        models_config(
            {
                "half_plus_two": str(REPO / "models" / "half_plus_two"),
                "mlp": str(REPO / "models" / "mlp"),
            },
            extra={
                "half_plus_two": "model_version_policy { all {} }\n"
                "version_labels { key: 'stable' value: 1 }"
            },
        )
    )
    return cfg


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> GrpcServer:
    """`python -m app` with gRPC on a free 127.0.0.1 port; the caller stops it."""
    port = free_port()
    proc = ServerProcess([f"--port={port}", *args], env=env)
    proc.start(log)
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)
    return GrpcServer(
        proc,
        target,
        channel,
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def stop(server: GrpcServer) -> None:
    server.channel.close()
    server.proc.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    """The demo models (batching off), gRPC and REST, one server per test module."""
    tmp = tmp_path_factory.mktemp("grpc")
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    server = start(
        [f"--model_config_file={demo_config(tmp)}", f"--monitoring_config_file={monitoring}"],
        tmp / "server.log",
    )
    try:
        wait_all_available(server.url, {"half_plus_two": 2})
        yield server
    finally:
        stop(server)
