"""A real server for the rollout tests: several models over one library of versions, the
rollout file polled fast, the controller evaluating 5 times a second."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from app.publish import publish
from tests.harness import (
    ServerProcess,
    build_bias_versions,
    free_port,
    models_config,
    wait_all_available,
)

GOOD = (1, 2)  # 0.5*x + v
FAR = 40  # 0.5*x + 40: answers "far off" from version 1
FAILING = 66  # loads fine, fails every request
MODELS = ("plain", "shadowed", "fail_shadow", "fail_canary", "far_shadow", "far_canary", "healthy")
TOKEN = "rollout-tests-token"
ENV = {
    "HOTSERVE_ADMIN_TOKEN": TOKEN,
    "HOTSERVE_VERSION_SETTLE_SECONDS": "0.2",
    "HOTSERVE_FILE_SYSTEM_POLL_WAIT_SECONDS": "1",
    "HOTSERVE_MAX_NUM_LOAD_RETRIES": "0",
}


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1, 2 (good), 40 (far off) and 66 (fails at run time), as SavedModels."""
    return build_bias_versions(
        tmp_path_factory.mktemp("rollout-versions"), (*GOOD, FAR), failing=(FAILING,)
    )


@dataclass
class RolloutServer:
    proc: ServerProcess
    grpc_target: str
    rollout_file: Path
    base: Path
    entries: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proc.url

    def set_rollout(self, model: str, rollout: dict[str, object]) -> None:
        """Add/replace one model's rollout in the rollout file (atomically: write + rename)."""
        self.write(model, {"rollout": rollout})

    def write(self, model: str, entry: dict[str, object]) -> None:
        """Add/replace one model's whole entry (rollout and/or policy) in the rollout file."""
        self.entries[model] = entry
        tmp = self.rollout_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"models": self.entries}))
        tmp.replace(self.rollout_file)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def gauge(self, name: str, **labels: str) -> float | None:
        return sample(self.metrics(), name, **labels)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of series `name` with exactly these labels in a Prometheus exposition."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.index("}") + 1]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


def phase(srv: RolloutServer, model: str) -> str | None:
    text = srv.metrics()
    for p in ("shadow", "canary", "paused", "promoted", "rolled_back"):
        if sample(text, "hotserve_rollout_phase", model=model, phase=p) == 1.0:
            return p
    return None


async def wait_phase(srv: RolloutServer, model: str, want: str, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while await anyio.to_thread.run_sync(phase, srv, model) != want:
            await anyio.sleep(0.1)


@pytest.fixture(scope="module")
def rollout_server(
    tmp_path_factory: pytest.TempPathFactory, library: Path
) -> Iterator[RolloutServer]:
    """One server, every model of MODELS over every version (policy `all`), plus `auto` whose
    base starts with version 1 only (latest policy) for the publish tests."""
    tmp = tmp_path_factory.mktemp("rollout-server")
    base = tmp / "all"
    base.mkdir()
    for v in (*GOOD, FAR, FAILING):
        publish(library / str(v), base, v)
    auto = tmp / "auto"
    auto.mkdir()
    publish(library / "1", auto, 1)
    cfg = tmp / "models.config"
    extra = dict.fromkeys(MODELS, "model_version_policy { all {} }")
    extra["plain"] = "model_version_policy { specific { versions: 1 } }"  # the no-rollout twin
    cfg.write_text(models_config({**dict.fromkeys(MODELS, str(base)), "auto": str(auto)}, extra))
    rollout_file = tmp / "rollouts.json"
    rollout_file.write_text('{"models": {}}')
    grpc_port = free_port()
    proc = ServerProcess(
        [
            f"--port={grpc_port}",
            f"--model_config_file={cfg}",
            f"--rollout_config_file={rollout_file}",
            "--rollout_config_poll_wait_seconds=0.2",
            "--rollout_interval_seconds=0.2",
        ],
        env=ENV,
    )
    proc.start(tmp / "server.log", ready_timeout=120)
    try:
        wait_all_available(proc.url, {m: 1 if m == "plain" else 4 for m in MODELS})
        yield RolloutServer(proc, f"127.0.0.1:{grpc_port}", rollout_file, auto)
    finally:
        proc.stop()


@dataclass
class Load:
    """Closed-loop clients posting XS to a model's default route; every answer's version (by
    value) and every failure recorded with its send time."""

    url: str
    xs: tuple[float, ...] = (1.0, 2.0, 3.0)
    answers: list[tuple[float, int]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    stop: bool = False

    async def client(self, c: httpx.AsyncClient) -> None:
        body = {"instances": list(self.xs)}
        while not self.stop:
            sent = time.monotonic()
            try:
                r = await c.post(self.url, json=body)
            except httpx.HTTPError as exc:
                self.failures.append((sent, repr(exc)))
                continue
            self.latencies.append(time.monotonic() - sent)
            if r.status_code != 200:
                self.failures.append((sent, f"{r.status_code} {r.text}"))
                continue
            preds = r.json()["predictions"]
            self.answers.append((sent, round(preds[0] - 0.5 * self.xs[0])))

    async def run_for(self, seconds: float, clients: int = 4) -> None:
        async with httpx.AsyncClient(timeout=30) as c, anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(self.client, c)
            end = time.monotonic() + seconds
            while not self.stop and time.monotonic() < end:
                await anyio.sleep(0.05)
            self.stop = True


def versions(load: Load, since: float = 0.0) -> dict[int, int]:
    out: dict[int, int] = {}
    for sent, v in load.answers:
        if sent >= since:
            out[v] = out.get(v, 0) + 1
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
