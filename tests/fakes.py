"""Fake Loaders/Servables: a slow or failing model (injected via create_app), and a scripted
loader for the lifecycle state-machine tests (failures, signatures, blocking loads)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from app.core.batcher import DirectRunner
from app.core.lifecycle import LoadOptions
from app.core.registry import Registry
from app.core.scanner import ScanResult
from app.core.servable import Example
from app.core.types import ModelConfig, Signature, TensorSpec, VersionPolicy, VersionStatus
from app.errors import Internal, LoadError, NotFound

POISON = 666.0  # a row holding this value makes the model call fail

SIGNATURES = {
    "serving_default": Signature(
        name="serving_default",
        method_name="tensorflow/serving/predict",
        inputs={"x": TensorSpec("x", "DT_FLOAT", (-1,), "x:0")},
        outputs={"y": TensorSpec("y", "DT_FLOAT", (-1,), "y:0")},
    )
}


class SlowServable:
    """y = 2x after `delay` seconds; records every row it was asked to compute."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seen: list[float] = []
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return SIGNATURES

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(inputs["x"], dtype=np.float32)
        with self._lock:
            self.seen.extend(float(v) for v in x.ravel())
            self.calls += 1
        time.sleep(self.delay)
        if (x == POISON).any():
            raise Internal("poisoned batch")
        return {"y": x * 2}

    def metadata(self) -> dict[str, Any]:
        return {"signature_def": {"signature_def": {}}}

    def serialize_examples(
        self, context: Example | None, examples: Sequence[Example]
    ) -> np.ndarray:
        raise Internal("the fake model has no classify/regress signatures")

    def warmup(self, iterations: int) -> int:
        return 0

    def unload(self) -> None:
        return None


class SlowLoader:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.servables: list[SlowServable] = []

    def load(self, path: Path) -> SlowServable:
        servable = SlowServable(self.delay)
        self.servables.append(servable)
        return servable


class ScriptedServable(SlowServable):
    """A SlowServable (y = 2x, no delay) with chosen signatures that records its unload."""

    def __init__(self, key: str, signatures: Mapping[str, Signature], events: list[str]) -> None:
        super().__init__(0.0)
        self.key = key
        self._signatures = signatures
        self._events = events

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def unload(self) -> None:
        self._events.append(f"unload {self.key}")


@dataclass
class Script:
    """What loading one version directory does."""

    fail: int = 0  # the first `fail` attempts raise LoadError
    signatures: Mapping[str, Signature] = field(default_factory=lambda: SIGNATURES)
    gate: threading.Event | None = None  # when set, a load blocks until the event is set


class ScriptedLoader:
    """A Loader whose behaviour per version directory name ("1", "10", ...) is scripted.

    `events` records "load <key>", "fail <key>" and "unload <key>" in order; `attempts` counts
    load calls per key. `load` runs in worker threads: list appends are atomic under the GIL.
    """

    def __init__(self, **scripts: Script) -> None:
        self.scripts: dict[str, Script] = {k.lstrip("v"): s for k, s in scripts.items()}
        self.events: list[str] = []
        self.attempts: Counter[str] = Counter()

    def load(self, path: Path) -> ScriptedServable:
        key = path.name
        script = self.scripts.get(key, Script())
        self.attempts[key] += 1
        if script.gate is not None:
            script.gate.wait(10)
        if self.attempts[key] <= script.fail:
            self.events.append(f"fail {key}")
            raise LoadError(f"version {key} is broken (attempt {self.attempts[key]})")
        self.events.append(f"load {key}")
        return ScriptedServable(key, script.signatures, self.events)


FAST = LoadOptions(
    max_num_load_retries=5,
    load_retry_interval_seconds=60.0,  # tests that pass never wait for a back-off
    enable_warmup=False,
    drain_timeout_seconds=5.0,
    load_thread_nice=0,
)


class Driver:
    """A real Registry over a ScriptedLoader, fed ScanResults by hand (no filesystem, no
    TensorFlow): the fast harness for lifecycle state-machine tests. Use inside `running()`."""

    def __init__(self, loader: ScriptedLoader, **options: Any) -> None:
        self.loader = loader
        self.inference = anyio.CapacityLimiter(4)
        self.registry = Registry(
            loader,
            lambda sid, servable, path: DirectRunner(servable.run, self.inference),
            anyio.CapacityLimiter(1),
            replace(FAST, **options),
        )
        self.configs: dict[str, ModelConfig] = {}

    def set_models(self, *configs: ModelConfig) -> None:
        self.configs.update({c.name: c for c in configs})  # removed ones stay, for late scans
        self.registry.set_models(list(configs))

    async def offer(
        self, name: str, *versions: int, generations: dict[int, int] | None = None
    ) -> None:
        """A scan of `name` that found `versions` (complete), with the model's version policy."""
        found = {v: Path("/fake") / name / str(v) for v in versions}
        aspired = frozenset(self.configs[name].version_policy.select(set(found)))
        result = ScanResult(name, found, {}, None, aspired, dict(generations or {}))
        await self.registry.on_scan(result)

    def states(self, name: str) -> dict[int, str]:
        """version -> state name, as the status route reports them ({} before any version)."""
        try:
            return {s.version: s.state.value for s in self.registry.status(name)}
        except NotFound:
            return {}

    def status(self, name: str, version: int) -> VersionStatus:
        return self.registry.status(name, version)[0]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Driver]:
        async with anyio.create_task_group() as tg:
            await tg.start(self.registry.run)
            try:
                yield self
            finally:
                await self.registry.close(5.0)
                tg.cancel_scope.cancel()


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll `check()` until it is truthy (every 5 ms), or fail after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.005)


def model(
    name: str = "m",
    policy: VersionPolicy | None = None,
    labels: dict[str, int] | None = None,
) -> ModelConfig:
    return ModelConfig(
        name, f"/fake/{name}", version_policy=policy or VersionPolicy(), version_labels=labels or {}
    )
