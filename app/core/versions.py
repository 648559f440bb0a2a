"""Single loaded versions: `ModelVersion`, and `VersionWork`, which loads, warms up, drains and
releases one version at a time for `app.core.lifecycle` (which decides when).

Threading: every method runs on the event-loop thread; the blocking parts (Loader.load,
Servable.warmup/unload, the memory release hook) run in the load limiter, never on the loop: at
the load priority (`LoadPriority`), but for the memory release hook's steps (a collection, then
the heap trim), which the inference threads run after their model calls while requests are in
flight, and the limiter's thread otherwise (`LoadPriority.serve_steps`; see `release`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
from anyio import to_thread

from app.core.batch_usage import BatchUsage
from app.core.batcher import Runner
from app.core.priority import LoadPriority
from app.core.servable import Loader, Servable
from app.core.signatures import SignatureCheck
from app.core.types import ServableId, Signature

log = logging.getLogger(__name__)


RunnerFactory = Callable[[ServableId, Servable, Path], Runner]
# Servable.warm_batch_sizes(sizes, sizes_while_idle) -> sizes run (app.runtime.saved_model)
WarmSizes = Callable[[tuple[int, ...], tuple[int, ...]], int]
# app.runtime.memory `release_memory`: called after an unload with a runner for its steps
ReleaseMemory = Callable[[Callable[[Iterator[int]], None]], None]


@dataclass(eq=False)
class ModelVersion:
    """One loaded version: its servable, its runner (batcher or direct) and its refcount.

    `used` holds the names of the signatures requests resolved on this version (the edge calls
    `mark_used` once per request, on the loop thread); `--signature_check=used` protects them.
    """

    id: ServableId
    path: Path
    servable: Servable
    runner: Runner
    signatures: Mapping[str, Signature]
    refcount: int = 0
    idle: anyio.Event = field(default_factory=anyio.Event)
    cache: dict[str, Any] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.idle.set()

    def mark_used(self, signature: str) -> None:
        """Record that a request called `signature` (a method call and a set add: ~0.1 µs)."""
        self.used.add(signature)


class PublishGate(Protocol):
    """Admission of loaded versions shared with other processes (`app.worker`): a version
    becomes routable only once `ready` says every worker has it. Called on the loop thread."""

    async def ready(self, sid: ServableId) -> bool:
        """Wait until every worker loaded `sid` (True) or one of them gave it up (False)."""
        ...

    def failed(self, sid: ServableId, reason: str) -> None:
        """This worker gave up loading `sid` (no retries left)."""
        ...

    def published(self, sid: ServableId) -> None:
        """`sid` is routable in this worker now."""
        ...

    def withdrawn(self, sid: ServableId) -> None:
        """`sid` left this worker's routes (it drains and unloads now)."""
        ...

    def catch_up(self, model: str) -> int | None:
        """The version every other worker serves for `model`, when this worker was started to
        replace one that died: aspired here (besides the source's) until a newer one is
        loaded, so a restarted worker serves what the others do even when the newest version
        on disk cannot load. None: nothing to catch up with."""
        ...


@dataclass(frozen=True)
class LoadOptions:
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    enable_warmup: bool = True
    warmup_iterations: int = 1
    synthetic_warmup: bool = False
    drain_timeout_seconds: float = 30.0
    resource_preserving: bool = False
    signature_check: SignatureCheck = "used"
    load_thread_nice: int = 5
    load_busy_cpu_share: float = 1.0
    publish_gate: PublishGate | None = None


class VersionWork:
    """The blocking work on one version, done in the load limiter."""

    def __init__(
        self,
        *,
        loader: Loader,
        runner_factory: RunnerFactory,
        limiter: anyio.CapacityLimiter,
        options: LoadOptions,
        release_memory: ReleaseMemory,
        priority: LoadPriority,
    ) -> None:
        self._loader = loader
        self._runner_factory = runner_factory
        self._limiter = limiter
        self._options = options
        self._release_memory = release_memory
        self._priority = priority

    async def load(
        self, sid: ServableId, path: Path, check: Callable[[Mapping[str, Signature]], None]
    ) -> ModelVersion:
        """Load, `check` the signatures (raises to refuse), warm up, attach a runner. Any
        failure unloads what was loaded and propagates."""
        servable = await to_thread.run_sync(
            self._priority.call, self._loader.load, path, limiter=self._limiter
        )
        try:
            check(servable.signatures)  # before paying for warmup
            records = await self.warm(servable)
            runner = self._runner_factory(sid, servable, path)
            sizes = await self.warm_batch_sizes(servable, runner)
        except BaseException:
            await to_thread.run_sync(servable.unload, limiter=self._limiter)
            raise
        log.info(
            "model %s version %d: warmed up with %d records, %d batch sizes",
            sid.name,
            sid.version,
            records,
            sizes,
        )
        return ModelVersion(
            id=sid,
            path=path,
            servable=servable,
            runner=runner,
            signatures=dict(servable.signatures),
        )

    async def warm(self, servable: Servable) -> int:
        if not self._options.enable_warmup:
            return 0
        n = await to_thread.run_sync(
            self._priority.call,
            servable.warmup,
            self._options.warmup_iterations,
            limiter=self._limiter,
        )
        if n == 0 and self._options.synthetic_warmup:
            synthetic = getattr(servable, "synthetic_warmup", None)
            if synthetic is not None:
                n = int(
                    await to_thread.run_sync(self._priority.call, synthetic, limiter=self._limiter)
                )
        return int(n)

    async def warm_batch_sizes(self, servable: Servable, runner: Runner) -> int:
        """Run the warmup's inputs again at every row count the runner's model calls use
        (`Batcher.batch_sizes`), so the first real batch of each size is not the first call
        at that shape (TF builds per-shape kernels state, e.g. oneDNN primitives, on first
        use): the sizes up to the model's largest recent batch always, the larger ones only
        while no request is in flight (`Batcher.usage`, app.core.batch_usage). Only with
        warmup records (or synthetic warmup): hotserve never invents inputs for a model on
        its own. Returns the number of sizes run (0: nothing to do)."""
        sizes = tuple(getattr(runner, "batch_sizes", ()))
        warm: WarmSizes | None = getattr(servable, "warm_batch_sizes", None)
        if not self._options.enable_warmup or not sizes or warm is None:
            return 0
        usage: BatchUsage | None = getattr(runner, "usage", None)
        first, rest = usage.warm_first(sizes) if usage is not None else (sizes, ())
        done = await to_thread.run_sync(
            self._priority.call, warm, first, rest, limiter=self._limiter
        )
        return int(done)

    async def drain(self, mv: ModelVersion) -> bool:
        with anyio.move_on_after(self._options.drain_timeout_seconds):
            while mv.refcount > 0:
                await mv.idle.wait()
        if mv.refcount > 0:
            log.warning(
                "model %s version %d: gave up waiting for %d in-flight requests after %.1fs; "
                "it is released when they finish",
                mv.id.name,
                mv.id.version,
                mv.refcount,
                self._options.drain_timeout_seconds,
            )
            return False
        return True

    async def release(self, mv: ModelVersion, drained: bool) -> None:
        await mv.runner.close(timeout=self._options.drain_timeout_seconds)
        if drained:
            await to_thread.run_sync(self._priority.idle, mv.servable.unload, limiter=self._limiter)
        mv.cache.clear()
        # Not `idle`: malloc_trim holds each malloc arena's lock while it trims that arena, and
        # serving threads allocate from those arenas; under SCHED_IDLE the holder could wait for
        # a CPU behind the threads waiting for its lock (one trim: 1.1 s of wall time, no request
        # answered for 14 ms). Nor at normal priority on a thread of its own, where the kernel
        # could let it run a whole tick while serving waited: the collection and the trim are
        # steps the serving threads take after their model calls (`serve_steps`; README, causes).
        await to_thread.run_sync(
            self._release_memory, self._priority.serve_steps, limiter=self._limiter
        )
