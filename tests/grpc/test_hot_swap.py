"""A hot swap is as invisible over gRPC as over REST: 16 concurrent gRPC clients, 10 swaps,
nothing lost, and no answer from an old version once its successor's swap was reported done."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from app.publish import publish
from tests.grpc.conftest import GrpcServer, start, stop
from tests.integration.conftest import bias_versions, version_of
from tests.integration.test_hot_swap import ENV, wait_state

__all__ = ["bias_versions"]  # the session fixture that builds the versions, re-used here

XS = [1.0, 2.0, 3.0]
CLIENTS = 16
SWAPS = 10


def request() -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "hs"
    x: tensor_pb2.TensorProto = req.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add().size = len(XS)
    x.float_val.extend(XS)
    return req


@dataclass
class Load:
    """Closed-loop gRPC clients; every answer is recorded with its send time and version."""

    target: str
    results: list[tuple[float, float, int, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: bool = False

    async def client(self) -> None:
        req = request()
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self.stop:
                sent = time.monotonic()
                try:
                    resp: Any = await stub.Predict(req, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    self.failures.append(f"{exc.code()} {exc.details()}")
                    continue
                ys = np.asarray(resp.outputs["y"].float_val).tolist()
                echoed = resp.model_spec.version.value
                self.results.append((sent, time.monotonic(), version_of(ys, XS), echoed))


@pytest.fixture
def swap_server(tmp_path: Path, bias_versions: Path) -> Iterator[tuple[GrpcServer, Path]]:
    base = tmp_path / "hs"
    base.mkdir()
    publish(bias_versions / "1", base, 1)
    server = start(
        ["--model_name=hs", f"--model_base_path={base}"], tmp_path / "server.log", env=ENV
    )
    try:
        yield server, base
    finally:
        stop(server)


async def test_swaps_under_grpc_load_lose_nothing(
    swap_server: tuple[GrpcServer, Path], bias_versions: Path
) -> None:
    server, base = swap_server
    load = Load(server.target)
    done: dict[int, float] = {}
    async with anyio.create_task_group() as tg:
        for _ in range(CLIENTS):
            tg.start_soon(load.client)
        await anyio.sleep(0.5)
        for v in range(2, SWAPS + 2):
            publish(bias_versions / str(v), base, v)
            await wait_state(server.proc, v, "AVAILABLE")
            await wait_state(server.proc, v - 1, "END")
            done[v] = time.monotonic()
            await anyio.sleep(0.2)
        await anyio.sleep(0.3)
        load.stop = True
    assert load.failures == []
    assert len(load.results) > 200
    for sent, _received, version, echoed in load.results:
        assert echoed == version  # the echoed model_spec names the version that answered
        newest_done = max((v for v, t in done.items() if t < sent), default=1)
        assert version >= newest_done, "answered by a version after its swap was reported done"
    served = {v for _, _, v, _ in load.results}
    assert len(served) >= SWAPS, served  # the load really spanned the swaps
