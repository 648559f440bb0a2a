"""The app's lifespan: builds the limiters, the Registry and the VersionSource, owns THE task group.

Start-up never waits for models: HTTP comes up at once, versions load in the background, and
`/readyz` (and the status route, LOADING) tell when they are available. Shutdown is ordered and
bounded: stop reconciling, drain and unload every version, then cancel the remaining tasks.

`app.state.shutting_down` turns True when shutdown begins and stays True: at SIGTERM/SIGINT
(under uvicorn the signal starts the shutdown; the lifespan only exits after uvicorn drained the
HTTP connections), or at the lifespan's exit when no signal came (an embedding server, tests).
`/readyz` answers 503 from then on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio import from_thread, to_thread
from fastapi import FastAPI

from app import config
from app.control.events import EventLog
from app.control.traffic import Traffic
from app.core.batch_usage import BatchUsage
from app.core.batcher import Batcher, DirectRunner, Runner
from app.core.lifecycle import LoadOptions, ReleaseMemory, RunnerFactory
from app.core.registry import Registry
from app.core.servable import Loader, Servable
from app.core.source import VersionScanner, VersionSource
from app.core.ticker import TICKER
from app.core.types import BatchPolicy, ModelConfig, ServableId, VersionState, VersionStatus
from app.errors import ConfigError, FailedPrecondition, NotFound
from app.metrics import Metrics
from app.rollout.source import RolloutFileSource
from app.rollout.table import RolloutTable
from app.settings import Settings
from app.shutdown import remaining
from app.storage.cache import VersionCache
from app.storage.scanner import RemoteScanner, SplitScanner

if TYPE_CHECKING:
    from app.grpc.server import GrpcServer
    from app.grpc.service import Reload
    from app.rollout.controller import RolloutController
    from app.rollout.shadow import RolloutTap

log = logging.getLogger(__name__)

PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"
# Base paths scanned at once: an object-store scan may download a version, which must not hold
# up every other model's discovery.
SCAN_THREADS = 4


def load_options(settings: Settings) -> LoadOptions:
    interval = settings.load_retry_interval_micros / 1e6
    check = settings.signature_check
    if settings.allow_incompatible_signatures:
        log.warning(
            "--allow_incompatible_signatures is deprecated: it means --signature_check=off"
            " (was %s)",
            check,
        )
        check = "off"
    return LoadOptions(
        max_num_load_retries=max(settings.max_num_load_retries, 0),
        load_retry_interval_seconds=max(interval, 0.0),
        enable_warmup=settings.enable_model_warmup,
        warmup_iterations=max(settings.num_request_iterations_for_warmup, 1),
        synthetic_warmup=settings.synthetic_warmup,
        drain_timeout_seconds=settings.drain_timeout_seconds,
        resource_preserving=settings.load_policy == "resource_preserving",
        signature_check=check,
        load_thread_nice=settings.load_thread_nice,
        load_busy_cpu_share=settings.load_busy_cpu_share,
    )


def inference_threads(settings: Settings, policy: BatchPolicy | None) -> int:
    if policy is not None:
        return max(policy.num_batch_threads, 1)
    if settings.rest_api_num_threads > 0:
        return settings.rest_api_num_threads
    return 4 * (os.cpu_count() or 1)


def runner_factory(
    settings: Settings,
    policy: BatchPolicy | None,
    limiter: anyio.CapacityLimiter,
    metrics: Metrics | None = None,
) -> RunnerFactory:
    """Each loaded version gets its own runner, so a batch never mixes versions; the batchers
    of one model share its `BatchUsage`, so a new version is warmed at the sizes the old one
    ran."""
    usage: dict[str, BatchUsage] = {}

    def make(sid: ServableId, servable: Servable, path: Path) -> Runner:
        version_policy = policy
        per_model = path / PER_MODEL_BATCHING_FILE
        if settings.enable_per_model_batching_parameters and per_model.is_file():
            version_policy = config.read_batching_parameters(per_model)
        if metrics is not None:
            metrics.version_ready(sid, path)
        if version_policy is None:
            return DirectRunner(servable.run, limiter)
        log.info("model %s: batching with %s", sid, version_policy)
        observer = metrics.batch_observer(sid, version_policy) if metrics is not None else None
        model_usage = usage.setdefault(sid.name, BatchUsage())
        return Batcher(servable.run, version_policy, limiter, observer, model_usage)

    return make


def default_loader(settings: Settings) -> tuple[Loader, ReleaseMemory]:
    """The TensorFlow loader (imports TensorFlow) and its memory release hook."""
    from app.runtime.memory import release_memory
    from app.runtime.saved_model import SavedModelLoader

    intra = settings.tensorflow_intra_op_parallelism or settings.tensorflow_session_parallelism
    inter = settings.tensorflow_inter_op_parallelism or settings.tensorflow_session_parallelism
    tags = tuple(t.strip() for t in settings.saved_model_tags.split(",") if t.strip())
    return SavedModelLoader(
        tags=tags, intra_op_threads=intra, inter_op_threads=inter
    ), release_memory


def observed_runners(
    make: RunnerFactory, events: EventLog | None, traffic: Traffic | None
) -> RunnerFactory:
    """`make`, telling the event log a version is ready and counting its requests (status
    page); `make` itself when neither is wired in."""
    if events is None and traffic is None:
        return make

    def observed(sid: ServableId, servable: Servable, path: Path) -> Runner:
        if events is not None:
            events.version_ready(sid, path)
        runner = make(sid, servable, path)
        return traffic.wrap(sid.name, sid.version, runner) if traffic is not None else runner

    return observed


def state_observer(
    events: EventLog | None,
    traffic: Traffic | None,
    rollouts: RolloutController | None = None,
) -> Callable[[str, VersionStatus], None] | None:
    """The registry's state-change callback: the event log records it, traffic forgets ended
    versions, the rollout controller sees a newly published version start LOADING (auto-enter,
    Policy.on_publish) before it can take the default route."""
    hooks = [
        h
        for h in (
            events and events.observe,
            traffic and traffic.forget,
            rollouts and rollouts.version_state,
        )
        if h
    ]
    if not hooks:
        return None

    def observe(model: str, status: VersionStatus) -> None:
        for hook in hooks:
            hook(model, status)

    return observe


def config_reloader(
    settings: Settings, registry: Registry, source: VersionSource
) -> Callable[[], Awaitable[list[str]]]:
    """The admin API's "reload the config now": read models.config and apply it; on error the
    previous config stays (FailedPrecondition, without the file's path in the message)."""
    path = Path(settings.model_config_file)

    async def reload() -> list[str]:
        try:
            configs = await to_thread.run_sync(config.read_model_server_config, path)
        except OSError as exc:
            raise FailedPrecondition(f"Cannot read the model config file: {exc.strerror}") from None
        except ConfigError as exc:
            why = f"Invalid model config, kept the previous one: {exc.message}"
            raise FailedPrecondition(why) from None
        log.info("config reload (admin): %s", [c.name for c in configs])
        registry.set_models(configs)
        source.set_models(configs)
        return [c.name for c in configs]

    return reload


def grpc_server(settings: Settings, app: FastAPI, reload: Reload) -> GrpcServer | None:
    """The gRPC edge, or None when `--port=0` and no `--grpc_socket_path` (hotserve's choice:
    TF Serving refuses to start without any gRPC listener). Imported only when enabled: the
    gRPC edge pulls in TF Serving's protos, and with them TensorFlow."""
    from app.grpc.server import GrpcOptions, GrpcServer

    opts = GrpcOptions(
        host=settings.host,
        port=settings.port,
        socket_path=settings.grpc_socket_path,
        channel_arguments=settings.grpc_channel_arguments,
        ssl_config_file=settings.ssl_config_file,
        health_service=settings.enable_grpc_healthcheck_service,
        stop_grace_seconds=settings.drain_timeout_seconds,
        route_key_header=settings.route_key_header.lower(),
    )
    if not opts.enabled:
        return None
    metrics: Metrics | None = getattr(app.state, "metrics", None)
    return GrpcServer(
        opts,
        app.state.serving,
        metrics.requests if metrics is not None else None,
        reload,
        shutting_down=lambda: bool(getattr(app.state, "shutting_down", False)),
    )


def grpc_config_reloader(registry: Registry, source: VersionSource) -> Reload:
    """ModelService.HandleReloadConfigRequest: the new ModelServerConfig replaces the model set
    exactly as a models.config reload does (same parser, same validation, same messages), then
    waits until every model has settled, as TF Serving's ReloadConfig waits for new models."""

    async def reload(proto: Any) -> None:
        from google.protobuf import text_format

        configs = config.parse_model_server_config(text_format.MessageToString(proto))
        log.info("config reload (gRPC): %s", [c.name for c in configs])
        registry.set_models(configs)
        source.set_models(configs)
        # The registry publishes no readiness event; a short poll is cheap and bounded by the
        # caller's RPC deadline.
        while not registry.is_ready():  # noqa: ASYNC110
            await anyio.sleep(0.05)

    return reload


async def poll_config(
    settings: Settings, registry: Registry, source: VersionSource, current: list[ModelConfig]
) -> None:
    """Re-read models.config every --model_config_file_poll_wait_seconds; keep the old on error."""
    path = Path(settings.model_config_file)
    while True:
        await anyio.sleep(settings.model_config_file_poll_wait_seconds)
        try:
            configs = await to_thread.run_sync(config.read_model_server_config, path)
        except (ConfigError, OSError) as exc:
            log.error("config reload of %s failed, keeping the previous config: %s", path, exc)
            continue
        if configs != current:
            log.info("config reload: %s", [c.name for c in configs])
            registry.set_models(configs)
            source.set_models(configs)
            current = configs


def versions_in_use(registry: Registry) -> Callable[[str], set[int]]:
    """For scanning threads: the versions of a model the registry holds (not END), read on the
    event loop's thread (the registry is not thread-safe)."""

    def on_loop(name: str) -> set[int]:
        try:
            return {s.version for s in registry.status(name) if s.state is not VersionState.END}
        except NotFound:
            return set()

    def in_use(name: str) -> set[int]:
        return from_thread.run_sync(on_loop, name)

    return in_use


EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def notice_exit_signals(notice: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM first call `notice` (in the main thread, between bytecodes:
    keep it to setting a flag), then the handler installed before (uvicorn's, which starts its
    graceful shutdown; the default action or "ignore" when there was none).

    uvicorn offers no hook for "shutdown began" before the lifespan's exit, which comes only
    after every HTTP connection drained. Signal handlers can only be set from the main thread:
    elsewhere (a server run in a thread) this does nothing and the lifespan's exit is the notice.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}

    def handler(sig: int, frame: FrameType | None) -> None:
        notice()
        chained = previous[signal.Signals(sig)]
        if callable(chained):
            chained(sig, frame)
        elif chained == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in EXIT_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, chained in previous.items():
            # Restore only what is still ours; None means "not set from Python": leave it.
            if signal.getsignal(sig) is handler and chained is not None:
                signal.signal(sig, chained)


def rollout_source(
    app: FastAPI, settings: Settings, registry: Registry
) -> RolloutFileSource | None:
    """Empty the rollout table (a rollout belongs to the registry it was set on), end a model's
    rollout when models.config drops the model, and make the --rollout_config_file poller, if
    a file is configured."""
    table: RolloutTable | None = getattr(app.state, "rollouts", None)
    if table is None:
        return None
    table.reset()
    registry.add_retire_listener(table.model_removed)
    if not settings.rollout_config_file:
        return None
    path = Path(settings.rollout_config_file)
    source = RolloutFileSource(path, table, settings.rollout_config_poll_wait_seconds)
    registry.add_retire_listener(source.forget)
    return source


def _observed_loader(
    app: FastAPI, settings: Settings, injected: Loader | None
) -> tuple[Loader, ReleaseMemory | None]:
    """The injected loader, else the TensorFlow one with its memory release hook; timed by
    the metrics and the event log when the app has them."""
    release: ReleaseMemory | None = None
    if injected is None:
        loader, release = default_loader(settings)
    else:
        loader = injected
    metrics: Metrics | None = getattr(app.state, "metrics", None)
    if metrics is not None:
        loader = metrics.timed_loader(loader)
    events: EventLog | None = getattr(app.state, "events", None)
    if events is not None:
        loader = events.timed_loader(loader)
    return loader, release


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    injected: Loader | None = app.state.loader
    configs = config.initial_models(settings)
    policy = config.batch_policy_for(settings)
    loader, release = _observed_loader(app, settings, injected)
    metrics: Metrics | None = getattr(app.state, "metrics", None)
    events: EventLog | None = getattr(app.state, "events", None)
    traffic: Traffic | None = getattr(app.state, "traffic", None)
    inference = anyio.CapacityLimiter(inference_threads(settings, policy))
    loads = anyio.CapacityLimiter(max(settings.num_load_threads, 1))
    gate = getattr(app.state, "publish_gate", None)  # set by app.workers under --workers N
    registry = Registry(
        loader,
        observed_runners(runner_factory(settings, policy, inference, metrics), events, traffic),
        loads,
        replace(load_options(settings), publish_gate=gate),
        release,
        observe=state_observer(events, traffic, getattr(app.state, "rollout_controller", None)),
    )
    registry.set_models(configs)
    scanner = SplitScanner(
        VersionScanner(settings.version_settle_seconds, settings.version_done_marker),
        RemoteScanner(
            VersionCache(settings.model_cache_dir, settings.model_cache_max_bytes),
            settings.version_done_marker,
            in_use=versions_in_use(registry),
        ),
    )
    source = VersionSource(
        scanner,  # type: ignore[arg-type]  # the duck type VersionSource uses
        float(settings.file_system_poll_wait_seconds),
        anyio.CapacityLimiter(SCAN_THREADS),
        registry.on_scan,
        file_events=settings.watch_file_events,
    )
    source.set_models(configs)
    app.state.registry = registry
    rollout_file = rollout_source(app, settings, registry)
    app.state.reload_config = (
        config_reloader(settings, registry, source) if settings.model_config_file else None
    )
    grpc = grpc_server(settings, app, grpc_config_reloader(registry, source))
    log.info(
        "hotserve: serving %s (batching %s)",
        ", ".join(f"{c.name} <- {c.base_path}" for c in configs) or "no models",
        "on" if policy else "off",
    )

    def begin_shutdown() -> None:
        app.state.shutting_down = True

    if release is not None:  # the TensorFlow loader's process: see _freeze_startup
        _freeze_startup()
    with notice_exit_signals(begin_shutdown):
        async with idle_ticker(settings, release is not None), anyio.create_task_group() as tg:
            if gate is not None:
                await tg.start(gate.run)
            await _start_rollouts(tg, app, registry)
            discovery = anyio.CancelScope()
            tg.start_soon(
                partial(_discover, rollout_file=rollout_file),
                discovery, settings, registry, source, configs,
            )  # fmt: skip
            if gate is not None:  # a restarted worker accepts once it serves what the others do
                await gate.caught_up(registry)
            if grpc is not None:
                await tg.start(grpc.run)
            try:
                yield
            finally:
                begin_shutdown()
                # Discovery and config polling stop first: nothing new loads while we unload.
                discovery.cancel()
                await _stop_serving(app, settings, grpc, registry)
                tg.cancel_scope.cancel()


@asynccontextmanager
async def idle_ticker(settings: Settings, tensorflow: bool) -> AsyncIterator[None]:
    """The idle-step ticker (app.core.ticker) for the block, where TensorFlow loads paced
    (`tensorflow`, `--load_busy_cpu_share` < 1) and `--load_idle_tick_micros` > 0. Entered
    before any load, so the helper's start-up never falls in a swap; its start and stop (a
    spawn, a wait) run in a worker thread."""
    if not tensorflow or settings.load_idle_tick_micros <= 0 or settings.load_busy_cpu_share >= 1:
        yield
        return
    await anyio.to_thread.run_sync(TICKER.start, settings.load_idle_tick_micros / 1e6, ticker_cpu())
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(TICKER.stop)


def ticker_cpu() -> int | None:
    """The CPU of this process's ticker: the highest allowed one, or under `--workers N` (app.
    workers sets HOTSERVE_WORKER_INDEX) one per worker from the highest down, so that workers
    loading at once do not queue their steps on one CPU. None where affinity is unknown."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    try:
        index = int(os.environ.get("HOTSERVE_WORKER_INDEX", "0"))
    except ValueError:
        index = 0
    return cpus[-1 - index % len(cpus)]


def _freeze_startup() -> None:
    """The last step of start-up, after every import and object the edges need (the gRPC
    stack included) and before any model loads: see freeze_startup_objects (swap-time GC)."""
    from app.runtime.memory import freeze_startup_objects

    freeze_startup_objects()


async def _start_rollouts(tg: anyio.abc.TaskGroup, app: FastAPI, registry: Registry) -> None:
    """The registry, then the shadow tasks' owner and the rollout controller (issue 11), in THE
    task group."""
    await tg.start(registry.run)
    tap: RolloutTap | None = getattr(app.state, "rollout_tap", None)
    controller: RolloutController | None = getattr(app.state, "rollout_controller", None)
    if tap is not None:
        tap.reset()
        await tg.start(tap.run)
    if controller is not None:
        await tg.start(controller.run)


async def _stop_serving(
    app: FastAPI, settings: Settings, grpc: GrpcServer | None, registry: Registry
) -> None:
    """Ordered, within the shutdown budget: gRPC refuses new RPCs and lets in-flight ones
    finish, then every version drains and unloads."""
    tap: RolloutTap | None = getattr(app.state, "rollout_tap", None)
    if tap is not None:
        tap.stop()  # no new shadow work; running shadows hold leases the drain waits for
    deadline = getattr(app.state, "shutdown_deadline", None)
    budget = remaining(deadline, settings.drain_timeout_seconds)
    with anyio.CancelScope(shield=True), anyio.move_on_after(budget) as scope:
        if grpc is not None:
            await grpc.stop(budget)
        await registry.close(remaining(deadline, budget))
    if scope.cancelled_caught:
        log.warning("shutdown: stopped unloading after %.1fs (budget)", budget)


async def _discover(
    scope: anyio.CancelScope,
    settings: Settings,
    registry: Registry,
    source: VersionSource,
    configs: list[ModelConfig],
    *,
    rollout_file: RolloutFileSource | None = None,
) -> None:
    """Version discovery, models.config and rollout file polling, under one scope the
    shutdown cancels."""
    with scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.run)
            if rollout_file is not None:
                tg.start_soon(rollout_file.run)
            if settings.model_config_file and settings.model_config_file_poll_wait_seconds > 0:
                tg.start_soon(poll_config, settings, registry, source, configs)
