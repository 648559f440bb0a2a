"""The manager: which versions of which models are loaded, and the routing snapshot.

Owns the lifecycle of every version (START -> LOADING -> AVAILABLE -> UNLOADING -> END) and the
immutable `Snapshot` that requests resolve against.

Threading contract:
- Everything here runs on the event-loop thread. Blocking work (load, warmup, unload) goes to the
  load limiter through `anyio.to_thread.run_sync`.
- `acquire()` is synchronous and lock-free: it reads `self._snapshot` (one attribute) and bumps
  the chosen version's refcount. Only the per-model reconcilers (`ModelState.run`) replace the
  snapshot, in one assignment.
- A version is released only after it left the snapshot AND its refcount reached zero (bounded by
  the drain timeout), so a request that resolved a version always finishes on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import anyio.abc

from app.core import routing
from app.core.lifecycle import (
    LoadOptions,
    ModelRoute,
    ModelState,
    ModelVersion,
    ReleaseMemory,
    RunnerFactory,
)
from app.core.overrides import Overrides
from app.core.priority import LoadPriority
from app.core.scanner import ScanResult
from app.core.servable import Loader
from app.core.types import ModelConfig, VersionPolicy, VersionStatus
from app.errors import NotFound

log = logging.getLogger(__name__)

BUSY_LINGER = 0.25  # seconds a server stays busy for pacing after its last lease is released


@dataclass(frozen=True)
class Snapshot:
    models: Mapping[str, ModelRoute]


EMPTY = Snapshot(models={})


class Lease:
    """A pinned version: the refcount stays raised until the lease is released.

    `Lease.held` counts the leases held in this process (requests and shadow calls in flight,
    queued or running); `Lease.idle_since` is when it last fell to zero (time.monotonic(), s).
    Changed on the loop thread only; read from the loading thread as plain values."""

    __slots__ = ("version",)
    held = 0
    idle_since = float("-inf")

    @staticmethod
    def busy() -> bool:
        """Whether loads are paced now (app.core.pacing): a lease is held, or was within the
        last BUSY_LINGER seconds. Any thread.

        Why the linger: a load that stops pacing the moment no lease is held takes the core
        and the GIL from the requests about to arrive, which then cannot take leases, so the
        load ran unpaced for 6 ms at a time with no request answered (bench_swap, 64 MiB: a
        burst of ~50 restore units back to back after one sleep)."""
        return Lease.held > 0 or time.monotonic() - Lease.idle_since < BUSY_LINGER

    def __init__(self, version: ModelVersion) -> None:
        self.version = version
        Lease.held += 1
        version.refcount += 1
        if version.refcount == 1:
            version.idle = anyio.Event()

    def release(self) -> None:
        v = self.version
        Lease.held -= 1
        if not Lease.held:
            Lease.idle_since = time.monotonic()
        v.refcount -= 1
        if v.refcount == 0:
            v.idle.set()


class Registry:
    """All models, their states and the routing snapshot."""

    def __init__(
        self,
        loader: Loader,
        runner_factory: RunnerFactory,
        load_limiter: anyio.CapacityLimiter,
        options: LoadOptions,
        release_memory: ReleaseMemory | None = None,
        *,
        observe: Callable[[str, VersionStatus], None] | None = None,
    ) -> None:
        self._loader = loader
        self._runner_factory = runner_factory
        self._load_limiter = load_limiter
        self._options = options
        self._release_memory = release_memory or (lambda run_steps: None)
        self._priority = LoadPriority(
            options.load_thread_nice, options.load_busy_cpu_share, Lease.busy
        )
        self._observe = observe  # called with every version state change (app.control.events)
        self._snapshot: Snapshot = EMPTY
        self._models: dict[str, ModelState] = {}
        self._replaced: list[ModelState] = []  # retired states superseded by a new one
        self._tg: anyio.abc.TaskGroup | None = None
        self._run_done = anyio.Event()
        # Called (loop thread) with the name of a model removed from the configuration: its
        # overrides go with its retired state, so whoever set some (a rollout) must forget them.
        self._on_retire: list[Callable[[str], None]] = []

    # ---- request side (loop thread, no awaits) -------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @contextmanager
    def acquire(
        self,
        name: str,
        version: int | None = None,
        label: str | None = None,
        key: str | None = None,
    ) -> Iterator[ModelVersion]:
        """Pin one version for the duration of a request (TF Serving's ServableHandle).
        `key`: the request's routing key (sticky rollout split), None without one."""
        lease = Lease(self.resolve(name, version, label, key))
        try:
            yield lease.version
        finally:
            lease.release()

    def resolve(
        self, name: str, version: int | None, label: str | None, key: str | None = None
    ) -> ModelVersion:
        """The version a request for (name, version | label) is served by (`app.core.routing`)."""
        request = routing.VersionRequest(name, version, label, key)
        return routing.choose(self._snapshot.models, request)

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """TF Serving's GetModelStatus: every version ever tracked, highest first."""
        model = self._models.get(name)
        statuses = model.status_view() if model is not None else {}
        if not statuses:
            raise NotFound(f"Could not find any versions of model {name}")
        if version is not None:
            st = statuses.get(version)
            if st is None:
                raise NotFound(f"Could not find version {version} of model {name}")
            return [st]
        return [statuses[v] for v in sorted(statuses, reverse=True)]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def is_ready(self) -> bool:
        """Every configured model has settled: serving a version, or given up with an error."""
        return all(m.settled() for m in self._models.values() if m.active)

    def readiness(self) -> dict[str, str]:
        return {name: m.readiness() for name, m in sorted(self._models.items()) if m.active}

    # ---- control side --------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Long-lived: hosts one reconciler task per model. Cancel it to stop (after close())."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for model in self._models.values():
                    tg.start_soon(model.run)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self._run_done.set()

    def set_models(self, configs: list[ModelConfig]) -> None:
        """Apply a (re)loaded configuration: add, remove, update policies and labels."""
        wanted = {c.name: c for c in configs}
        for name, cfg in wanted.items():
            model = self._models.get(name)
            if model is None or not model.active:
                if model is not None:  # retired and added back: the old state may still drain
                    self._replaced = [m for m in self._replaced if not m.stopped] + [model]
                model = self._new_model(cfg, model)
                self._models[name] = model
                if self._tg is not None:
                    self._tg.start_soon(model.run)
                log.info("model %s added (base path %s)", name, cfg.base_path)
            elif model.config != cfg:
                model.update_config(cfg)
        for name, model in self._models.items():
            if name not in wanted and model.active:
                log.info("model %s removed from the configuration; unloading it", name)
                model.retire()
                for retired in list(self._on_retire):
                    retired(name)

    def _new_model(self, cfg: ModelConfig, previous: ModelState | None) -> ModelState:
        """A fresh state; a retired `previous` of the same name is only read (its statuses show
        under the new state's until the new state reports those versions itself), never shared."""
        return ModelState(
            cfg,
            loader=self._loader,
            runner_factory=self._runner_factory,
            load_limiter=self._load_limiter,
            options=self._options,
            publish=self._publish,
            release_memory=self._release_memory,
            priority=self._priority,
            previous=previous,
            observe=self._observe,
        )

    def overrides(self, name: str) -> Overrides:
        """The operator's overrides of model `name` (NotFound if it is not configured)."""
        return self._active_model(name).overrides

    def on_disk(self, name: str) -> frozenset[int]:
        """Complete versions of model `name` found by the last scan (NotFound if unknown)."""
        return self._active_model(name).on_disk

    def version_policy(self, name: str) -> VersionPolicy:
        """Model `name`'s configured version policy (NotFound if it is not configured)."""
        return self._active_model(name).config.version_policy

    def add_retire_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(name)` when model `name` is removed from the configuration (its
        overrides are dropped with it; a model added back starts with none)."""
        self._on_retire.append(listener)

    def override(self, name: str, overrides: Overrides) -> None:
        """The admin input (app.core.overrides), beside `on_scan`: replaces model `name`'s
        overrides; its reconciler applies them. The caller checks the safety rules."""
        self._active_model(name).override(overrides)

    def keeps_serving(self, name: str, overrides: Overrides) -> bool:
        """Whether model `name` would still have a version serving with `overrides` in place
        of its current ones (the admin API's "unloading the last version needs force")."""
        return self._active_model(name).keeps_serving(overrides)

    def _active_model(self, name: str) -> ModelState:
        model = self._models.get(name)
        if model is None or not model.active:
            raise NotFound(f"Could not find any versions of model {name}")
        return model

    async def on_scan(self, result: ScanResult) -> None:
        """VersionSource callback: hand the aspired set to the model's reconciler."""
        model = self._models.get(result.model)
        if model is None or not model.active:
            return
        model.offer(result)

    def _publish(self) -> None:
        """Rebuild the routing snapshot from every model's routable versions: one assignment."""
        self._snapshot = Snapshot(
            models={name: route for name, m in self._models.items() if (route := m.route())}
        )

    async def close(self, timeout: float) -> None:
        """Ordered shutdown: stop reconciling, drain and unload every version (bounded)."""
        if self._tg is not None:
            # Reconcilers stop first so nothing loads or swaps while we unload; a load already in
            # a worker thread finishes before its task sees the cancellation.
            self._tg.cancel_scope.cancel()
            with anyio.move_on_after(timeout):
                await self._run_done.wait()
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                for model in [*self._models.values(), *self._replaced]:
                    tg.start_soon(model.shutdown, timeout)
        if scope.cancelled_caught:
            log.warning("shutdown: gave up unloading after %.1fs", timeout)
        self._snapshot = EMPTY
