"""Memory across swaps (issue 7, tensorflow/serving#1664): is an unloaded version given back?

`measure()` serves a model holding one large variable (bench_swap/models.py) under steady wrk
load, reads the server's resident memory with ONE version loaded (warmed, after --memory-warmup
seconds of traffic, before anything is published), then publishes `swaps` new versions one at a
time and reads it again once each swap has completed (new version AVAILABLE, old version END,
plus `settle` s). The baseline is the one-version level, not the level after the first swap: a
swap that leaves a whole extra copy resident shows from the first swap on.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.publish import publish
from bench_swap.load import WrkLoad
from bench_swap.server import Server, ServerOptions

MODEL = "big"
TOLERANCE = 0.10  # after a swap, RSS within 10% of the one-version level
KEYS = ("VmRSS", "RssAnon", "VmHWM")


@dataclass(frozen=True)
class MemoryOptions:
    server_cpu: int
    load_cpu: int
    connections: int = 16
    warmup_s: float = 3.0  # traffic before the baseline is read
    settle_s: float = 0.5  # after the old version's END, before RSS is read
    timeout_s: float = 300.0  # per state change (a 1 GiB load is slow on a busy machine)
    tf_threads: int = 1
    env: tuple[tuple[str, str], ...] = ()  # the server's extra environment


@dataclass
class MemoryRun:
    """One server: RSS (KiB, /proc/<pid>/status) with one version, then after each swap."""

    mib: int
    policy: str
    env: tuple[tuple[str, str], ...]
    baseline: dict[str, int]
    after: list[dict[str, int]] = field(default_factory=list)
    requests: int = 0
    failures: int = 0

    def growth(self, i: int, key: str = "VmRSS") -> float:
        """RSS after swap i+1 over the one-version level, minus 1."""
        return self.after[i].get(key, 0) / max(self.baseline.get(key, 1), 1) - 1

    @property
    def worst(self) -> float:
        return max((self.growth(i) for i in range(len(self.after))), default=0.0)

    @property
    def worst_mib(self) -> float:
        """The largest RSS after a swap minus the one-version RSS, MiB."""
        top = max((m.get("VmRSS", 0) for m in self.after), default=0)
        return (top - self.baseline.get("VmRSS", 0)) / 1024 if self.after else 0.0

    @property
    def passed(self) -> bool:
        """The memory target only: resource_preserving fails requests by design (no version is
        served between the unload and the load), so failures are reported, not judged, here."""
        return bool(self.after) and self.worst <= TOLERANCE


def measure(
    src: Path, work: Path, policy: str, swaps: int, opts: MemoryOptions, mib: int
) -> MemoryRun:
    """Serve `src` (a `mib` MiB model) as versions 1..swaps+1 under load; see the module doc."""
    base = work / f"base-{MODEL}-{mib}-{policy}"
    shutil.rmtree(base, ignore_errors=True)
    publish(src, base, 1)
    body = work / f"body-{MODEL}.json"
    body.write_text('{"instances": [1.0, 2.0, 3.0]}')
    options = ServerOptions(
        base,
        work / f"server-{MODEL}-{mib}-{policy}.log",
        opts.server_cpu,
        tf_threads=opts.tf_threads,
        model=MODEL,
        flags=(f"--load_policy={policy}",),
        env=opts.env,
    )
    server = Server(options)
    load: WrkLoad | None = None
    try:
        server.wait_state(1, "AVAILABLE", opts.timeout_s, every=0.2)
        url = f"{server.url}/v1/models/{MODEL}:predict"
        load = WrkLoad(url, body, work, opts.connections, opts.load_cpu)
        time.sleep(opts.warmup_s)
        run = MemoryRun(mib, policy, opts.env, server.memory_kib())
        for version in range(2, swaps + 2):
            publish(src, base, version)
            server.wait_state(version, "AVAILABLE", opts.timeout_s, every=0.05)
            server.wait_state(version - 1, "END", opts.timeout_s, every=0.05)
            time.sleep(opts.settle_s)
            run.after.append(server.memory_kib())
            shutil.rmtree(base / str(version - 1), ignore_errors=True)  # disk, not memory
        load.stop()
        requests = load.requests()
        run.requests, run.failures = len(requests.sent), requests.failures
        return run
    finally:
        if load is not None and load.proc.poll() is None:
            load.proc.kill()
            load.proc.wait()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _env_text(env: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{k}={v}" for k, v in env) or "hotserve's defaults"


def table(runs: list[MemoryRun]) -> list[str]:
    """One row per server: one-version RSS, RSS after each swap (and its growth), verdict."""
    if not runs:
        return []
    swaps = max(len(r.after) for r in runs)
    head = ["model", "load policy", "environment", "one version"]
    head += [f"after swap {i + 1}" for i in range(swaps)]
    head += ["worst vs one version", f"within {TOLERANCE:.0%}", "failed requests"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in runs:
        cells = [f"{r.mib} MiB variable", r.policy, _env_text(r.env)]
        cells.append(f"{r.baseline.get('VmRSS', 0) / 1024:.0f} MiB")
        for i in range(swaps):
            if i < len(r.after):
                rss = r.after[i].get("VmRSS", 0) / 1024
                cells.append(f"{rss:.0f} MiB ({r.growth(i):+.1%})")
            else:
                cells.append("n/a")
        verdict = "PASS" if r.passed else "FAIL"
        cells += [f"{r.worst:+.1%} ({r.worst_mib:+.0f} MiB)", verdict]
        cells.append(f"{r.failures} of {r.requests}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def detail(runs: list[MemoryRun]) -> list[str]:
    """Anonymous memory and peak RSS beside VmRSS, in MiB, for each read."""
    rows = ["| model, policy | read | " + " | ".join(KEYS) + " |", "|---|---|---|---|---|"]
    for r in runs:
        reads = [("one version", r.baseline)]
        reads += [(f"after swap {i + 1}", m) for i, m in enumerate(r.after)]
        for name, m in reads:
            vals = " | ".join(f"{m.get(k, 0) / 1024:.0f}" for k in KEYS)
            rows.append(f"| {r.mib} MiB, {r.policy} | {name} | {vals} |")
    return rows


def render(runs: list[MemoryRun]) -> list[str]:
    return [
        "## Memory across swaps: one version loaded vs after each swap",
        "",
        "A model holding one large float32 variable (`y = x + big[0]`), served under wrk load "
        f"(`{MODEL}`); RSS read from /proc/<pid>/status with one version loaded and warmed, "
        "before any publish, then once each swap completed (old version END).",
        "",
        *table(runs),
        "",
        "Failed requests are expected under resource_preserving (the old version is unloaded "
        "before the new one loads, as in TF Serving); the swap latency table above is the "
        "judge of availability_preserving's.",
        "",
        "MiB:",
        "",
        *detail(runs),
    ]
