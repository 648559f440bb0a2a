"""The gRPC server: grpcio's asyncio server on the app's event loop, run as a lifespan task.

Started by the lifespan when `--port` is not 0 or `--grpc_socket_path` is set, and stopped by
it before the registry drains (new RPCs are refused, in-flight ones get the drain timeout).
Options follow TF Serving's server.cc:
- `--port` binds `<host>:<port>` (TF Serving binds every interface; hotserve's `--host`
  applies to both edges), `--grpc_socket_path` adds `unix:<path>`;
- message size limits lifted to 2^31-1 bytes both ways (TF Serving's SetMaxMessageSize(kint32max)
  instead of gRPC's 4 MiB receive default); `--grpc_channel_arguments` ("key=value,...",
  an integer value passed as an int) is applied after, so it can override them;
- `--ssl_config_file`: a text-format `tensorflow.serving.SSLConfig` (server_key, server_cert,
  custom_ca, client_verify), read as TF Serving reads it;
- `--enable_grpc_healthcheck_service`: grpc.health.v1.Health, SERVING while the server runs;
- server reflection is always on (grpcurl works without .proto files).
`--grpc_max_threads` sizes TF Serving's synchronous gRPC thread pool; grpc.aio runs handlers on
the event loop and model calls in the inference limiter, so it has nothing to size here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from app.errors import ConfigError
from app.grpc.service import ModelService, PredictionService, Reload, RequestObserver
from app.serving.service import Serving

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
SERVICES = (
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
)


@dataclass(frozen=True)
class GrpcOptions:
    host: str = "0.0.0.0"
    port: int = 8500
    socket_path: str = ""
    channel_arguments: str = ""
    ssl_config_file: str = ""
    health_service: bool = False
    stop_grace_seconds: float = 30.0
    route_key_header: str = "x-route-key"  # metadata key (lowercase) of a rollout's routing key

    @property
    def enabled(self) -> bool:
        return self.port != 0 or bool(self.socket_path)


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """TF Serving's --grpc_channel_arguments: "key=value,key2=value2"; integers stay integers."""
    out: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Invalid grpc_channel_arguments entry: {item!r} (want key=value)")
        try:
            out.append((key, int(value)))
        except ValueError:
            out.append((key, value))
    return out


def server_options(opts: GrpcOptions) -> list[tuple[str, Any]]:
    base: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", INT32_MAX),
        ("grpc.max_send_message_length", INT32_MAX),
    ]
    extra = channel_arguments(opts.channel_arguments)
    keys = {k for k, _ in extra}
    return [o for o in base if o[0] not in keys] + extra


def _ssl_config_class() -> Any:
    """tensorflow.serving.SSLConfig (tensorflow_serving/config/ssl_config.proto), which the pip
    package does not ship: the four fields, declared with the proto's own numbers."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="hotserve/ssl_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    msg = fdp.message_type.add(name="SSLConfig")
    field = descriptor_pb2.FieldDescriptorProto
    string, boolean = field.TYPE_STRING, field.TYPE_BOOL
    for number, (name, kind) in enumerate(
        (("server_key", string), ("server_cert", string), ("custom_ca", string)), start=1
    ):
        msg.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    msg.field.add(name="client_verify", number=4, type=boolean, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")
    )


def server_credentials(path: str) -> grpc.ServerCredentials:
    """Credentials from an SSLConfig text proto; client_verify requires client certificates
    signed by custom_ca (TF Serving's BuildServerCredentialsFromSSLConfigFile)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"Failed to read ssl_config_file {path}: {exc}") from exc
    config = _ssl_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Invalid protobuf file: '{path}': {exc}") from exc
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=bool(config.client_verify),
    )


def addresses(opts: GrpcOptions) -> Sequence[str]:
    out = [f"{opts.host}:{opts.port}"] if opts.port else []
    if opts.socket_path:
        out.append(f"unix:{opts.socket_path}")
    return out


class GrpcServer:
    """One grpc.aio server; `run` is the lifespan task, `stop` the ordered shutdown step."""

    def __init__(
        self,
        opts: GrpcOptions,
        serving: Serving,
        observer: RequestObserver | None = None,
        reload: Reload | None = None,
        shutting_down: Callable[[], bool] | None = None,
    ) -> None:
        """`shutting_down` (read on the loop thread) turns True at SIGTERM/SIGINT; the health
        service then answers NOT_SERVING at once, as /readyz answers 503 (app.shutdown)."""
        self.opts = opts
        self._shutting_down = shutting_down
        self.ports: list[int] = []
        self._serving = serving
        self._observer = observer
        self._reload = reload
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._stopped = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, start, report started, then serve until `stop()` (or cancellation)."""
        server = grpc.aio.server(options=server_options(self.opts))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self._serving, self._observer, self.opts.route_key_header.lower()),
            server,
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self._serving, self._reload), server
        )
        names: list[str] = [*SERVICES]
        if self.opts.health_service:
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            names.append(health.SERVICE_NAME)
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        creds = server_credentials(self.opts.ssl_config_file) if self.opts.ssl_config_file else None
        for address in addresses(self.opts):
            try:
                port = (
                    server.add_secure_port(address, creds)
                    if creds is not None
                    else server.add_insecure_port(address)
                )
            except RuntimeError as exc:
                raise ConfigError(f"Failed to bind gRPC to {address}: {exc}") from exc
            self.ports.append(port)
        await server.start()
        self._server = server
        if self._health is not None:
            await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC serving on %s", ", ".join(self._bound()))
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                if self._health is not None and self._shutting_down is not None:
                    tg.start_soon(self._not_serving_once_shutdown_begins, self._health)
                await self._stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    async def _not_serving_once_shutdown_begins(self, health: health.aio.HealthServicer) -> None:
        # The signal handler may only set a flag (app.shutdown), so the flag is watched; ten
        # reads a second cost nothing and keep the health answer within 0.1 s of /readyz's.
        assert self._shutting_down is not None
        while not self._shutting_down():  # noqa: ASYNC110 (a flag: see above)
            await anyio.sleep(0.1)
        log.info("gRPC health: NOT_SERVING (shutdown began)")
        await health.enter_graceful_shutdown()

    def _bound(self) -> list[str]:
        out = [f"{self.opts.host}:{p}" for p in self.ports[: 1 if self.opts.port else 0]]
        return out + ([f"unix:{self.opts.socket_path}"] if self.opts.socket_path else [])

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, give in-flight ones the grace period (`grace` seconds, else the
        configured one), then return."""
        self._stopped.set()
        await self._shutdown(grace)

    async def _shutdown(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await server.stop(self.opts.stop_grace_seconds if grace is None else grace)
        log.info("gRPC server stopped")
