#!/usr/bin/env python3
"""Throughput benchmark (issues 2 and 4): hotserve over HTTP vs the same model in-process.

Measures requests/s, p50 and p99 of `:predict` on the demo models at several concurrencies,
with batching off and on, against `servable.run` called in-process, and reports ratios taken in
one run (absolute numbers drift on shared machines; paired ratios hold).

Layout on a 2-core machine: every server and the in-process baseline are pinned to core 0
(`taskset -c 0`), wrk to core 1, so the load generator never takes the server's CPU. Both
servers (batching off and on) stay up for the whole run, idle when not measured; a round runs
every cell once (model x concurrency x batching, on/off adjacent, their order alternating by
round) plus the in-process timings, so drift spreads over all cells; the report gives medians
over rounds, and for ratios the median of the per-round ratios (paired cells).

The whole measurement holds an exclusive flock on /tmp/hotserve-bench.lock, so two benchmarks
never measure at the same time.

    .venv/bin/python scripts/bench.py                          # full run, ~8 min
    .venv/bin/python scripts/bench.py --duration 2 --rounds 1  # smoke run
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "scripts" / "bench"
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (scripts/bench/report.py)

LOCK = Path("/tmp/hotserve-bench.lock")
PYTHON = REPO / ".venv" / "bin" / "python"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input: str
    row_shape: tuple[int, ...]
    inproc_batches: tuple[int, ...]  # batch sizes timed in-process

    def body(self) -> bytes:
        """One request of one row. MLP: 784 "pixels" in [0, 1) with 4 decimals (~5.5 KB)."""
        if not self.row_shape:
            return b'{"instances": [1.0]}'
        rng = np.random.default_rng(0)
        row = np.round(rng.random(self.row_shape), 4).tolist()
        return json.dumps({"instances": [row]}).encode()

    def version_dir(self, repo: Path) -> Path:
        versions = [p for p in (repo / self.name).iterdir() if p.name.isdigit()]
        return max(versions, key=lambda p: int(p.name))


MODELS = {
    "half_plus_two": ModelSpec("half_plus_two", "x", (), (1,)),
    "mlp": ModelSpec("mlp", "images", (784,), (1, 8, 16, 32, 64)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="half_plus_two,mlp", help="comma-separated")
    p.add_argument("--concurrency", default="1,16,64", help="wrk connections, comma-separated")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batching", choices=("both", "on", "off"), default="both")
    p.add_argument("--out", type=Path, default=REPO / "bench-results")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds per server+model")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout-us", type=int, default=0)
    p.add_argument("--batch-threads", type=int, default=1)
    p.add_argument(
        "--inproc-batches", default="", help="override every model's in-process batch sizes"
    )
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="extra hotserve flag for both servers (repeatable), "
        "e.g. --server-flag=--log_level=warning",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VAL;...",
        help="a server configuration to measure instead of --batching's off/on (repeatable). "
        "Keys: batching=on|off, threads=N, timeout_us=N, max_batch=N, exp=A+B (experiments of "
        "scripts/bench/observed_server.py), flag=--hotserve_flag=value (repeatable), "
        "env=NAME=VALUE (the server's environment, repeatable). Ratios are "
        "taken against the variant named 'off' if any, else the first.",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also measure the HTTP floor (scripts/bench/floor_app.py: uvicorn, orjson, no model)",
    )
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    p.add_argument("--label", default="", help="free text put in the report header")
    args = p.parse_args(argv)
    args.model_specs = [MODELS[m] for m in args.models.split(",") if m]
    args.conc = [int(c) for c in args.concurrency.split(",")]
    defaults = Variant("", False, args.max_batch_size, args.batch_timeout_us, args.batch_threads)
    if args.variant:
        args.variants = [parse_variant(v, defaults) for v in args.variant]
    else:
        modes = ["off", "on"] if args.batching == "both" else [args.batching]
        args.variants = [replace(defaults, name=m, batching=m == "on") for m in modes]
    if args.floor:
        args.variants.append(replace(defaults, name="floor", floor=True))
    args.modes = [v.name for v in args.variants]
    if args.inproc_batches:
        sizes = tuple(int(b) for b in args.inproc_batches.split(","))
        args.model_specs = [
            ModelSpec(m.name, m.input, m.row_shape, sizes) for m in args.model_specs
        ]
    return args


@dataclass(frozen=True)
class Variant:
    """One server configuration (a column group of the report)."""

    name: str
    batching: bool
    max_batch_size: int = 64
    batch_timeout_us: int = 0
    batch_threads: int = 1
    experiments: str = ""  # BENCH_EXPERIMENT for scripts/bench/observed_server.py
    flags: tuple[str, ...] = ()
    floor: bool = False  # scripts/bench/floor_app.py instead of hotserve
    env: tuple[tuple[str, str], ...] = ()  # extra environment of the server process

    def describe(self) -> str:
        if self.floor:
            return "HTTP floor: bare ASGI app on uvicorn, orjson.loads, fixed answer, no model"
        parts = []
        if self.batching:
            parts.append(
                f"batching on (max_batch_size {self.max_batch_size}, batch_timeout_micros "
                f"{self.batch_timeout_us}, num_batch_threads {self.batch_threads})"
            )
        else:
            parts.append("batching off")
        if self.experiments:
            parts.append(f"experiments {self.experiments}")
        parts += self.flags
        parts += [f"{k}={v}" for k, v in self.env]
        return ", ".join(parts)


def parse_variant(text: str, defaults: Variant) -> Variant:
    name, _, spec = text.partition(":")
    v = replace(defaults, name=name, batching=name == "on")
    flags: list[str] = []
    env: list[tuple[str, str]] = []
    for item in filter(None, spec.split(";")):
        key, _, value = item.partition("=")
        if key == "batching":
            v = replace(v, batching=value == "on")
        elif key == "threads":
            v = replace(v, batch_threads=int(value))
        elif key == "timeout_us":
            v = replace(v, batch_timeout_us=int(value))
        elif key == "max_batch":
            v = replace(v, max_batch_size=int(value))
        elif key == "exp":
            v = replace(v, experiments=value.replace("+", ","))
        elif key == "flag":
            flags.append(value)
        elif key == "env":
            name, _, val = value.partition("=")
            env.append((name, val))
        elif key == "app" and value == "floor":
            v = replace(v, floor=True)
        else:
            sys.exit(f"--variant {text!r}: unknown key {key!r}")
    return replace(v, flags=tuple(flags), env=tuple(env))


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tf_flags() -> list[str]:
    # One thread in each TF pool: the server may only use core 0 (taskset), where extra
    # intra-op threads cannot run in parallel and only add hand-offs; inter-op 1 runs the graph
    # on the calling thread's pool of one. "0 = auto" would size the pools from the machine
    # and, for a process not pinned, spill onto the load generator's core. The in-process
    # baseline uses the same setting, so both sides run the model identically.
    return ["--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1"]


@dataclass
class Server:
    variant: Variant
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    stats: Path
    flags: list[str]

    @property
    def mode(self) -> str:
        return self.variant.name

    def url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models/{model}:predict"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) the server has used, per thread kind ("main" for the event
        loop thread, else the thread's name: python = anyio workers, tf_Compute = TF's pools)
        and "total"."""
        out: dict[str, float] = collections.defaultdict(float)
        tick = os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # the thread ended
            kind = "main" if task.name == str(self.proc.pid) else comm
            out[kind] += (int(fields[11]) + int(fields[12])) / tick
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        out["total"] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def tally(self) -> dict[str, Any]:
        """Cumulative counters of the server (scripts/bench/observed_server.py): batches and
        rows its batchers ran (all signatures), full (gen 2) collections and their pauses."""
        if self.variant.floor:
            return {"batches": 0, "rows": 0, "gc2_n": 0, "gc2_s": 0.0, "gc_n": 0, "gc_s": 0.0,
                    "gc_collected": 0}  # fmt: skip
        request = self.stats.with_suffix(".req")
        request.touch()
        deadline = time.monotonic() + 5
        while request.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            data = json.loads(self.stats.read_text() or "{}")
        except (OSError, ValueError):
            data = {}
        batches = data.get("batches", {}).values()
        gcs = data.get("gc", [[0, 0.0, 0.0, 0]] * 3)
        return {
            "batches": sum(v[0] for v in batches),
            "rows": sum(v[1] for v in batches),
            "gc2_n": gcs[2][0],
            "gc2_s": gcs[2][1],
            "gc_n": sum(g[0] for g in gcs),
            "gc_s": sum(g[1] for g in gcs),
            "gc_collected": sum(g[3] for g in gcs),
        }


def start_server(args: argparse.Namespace, variant: Variant, run_dir: Path) -> Server:
    port = free_port()
    flags = [
        f"--rest_api_port={port}",
        "--port=0",  # REST only unless a variant sets --port (two servers cannot share 8500)
        "--host=127.0.0.1",
        f"--model_repository={args.models_dir}",
        *tf_flags(),
        *args.server_flag,
        *variant.flags,
    ]
    mode = variant.name
    if variant.batching:
        params = run_dir / f"batching-{mode}.pbtxt"
        params.write_text(
            f"max_batch_size {{ value: {variant.max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {variant.batch_timeout_us} }}\n"
            f"num_batch_threads {{ value: {variant.batch_threads} }}\n"
            "max_enqueued_batches { value: 1000000 }\n"
        )
        flags += ["--enable_batching=true", f"--batching_parameters_file={params}"]
    log = run_dir / f"server-{mode}.log"
    stats = run_dir / f"batches-{mode}.json"
    stats.write_text("")
    env = dict(os.environ, BENCH_BATCH_STATS=str(stats), PYTHONUNBUFFERED="1")
    # The server runs THIS checkout's app: the shared venv's editable install may point at
    # another checkout, and a script's sys.path starts at its own folder, not the cwd.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["BENCH_EXPERIMENT"] = variant.experiments
    env.update(variant.env)
    script = "floor_app.py" if variant.floor else "observed_server.py"
    if variant.floor:
        flags = [f"--port={port}"]
    cmd = ["taskset", "-c", args.server_cpu, str(PYTHON), str(HERE / script), *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return Server(variant, port, proc, log, stats, flags)


def wait_ready(server: Server, models: list[ModelSpec], timeout: float = 180.0) -> None:
    """Poll /readyz, then check one real answer per model."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{server.port}/readyz"
    while True:
        if server.proc.poll() is not None:
            sys.exit(
                f"server ({server.mode}) exited with {server.proc.returncode}; see {server.log}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        failed = [
            ln for ln in server.log.read_text(errors="replace").splitlines() if "load attempt" in ln
        ]
        if failed:
            sys.exit(f"server ({server.mode}) failed to load a model: {failed[0][:300]}")
        if time.monotonic() > deadline:
            sys.exit(f"server ({server.mode}) not ready after {timeout:.0f} s; see {server.log}")
        time.sleep(0.3)
    for m in models:
        req = urllib.request.Request(
            server.url(m.name), data=m.body(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.loads(r.read())
        preds = answer.get("predictions")
        if not isinstance(preds, list) or len(preds) != 1:
            sys.exit(f"unexpected answer from {m.name}: {str(answer)[:200]}")


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class InProc:
    """A persistent scripts/bench/inproc.py worker for one model, pinned to the server core."""

    model: ModelSpec
    proc: subprocess.Popen[str]

    def measure(self, batch: int, seconds: float, warmup: float) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{batch} {seconds} {warmup}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"in-process worker for {self.model.name} died")
        result: dict[str, float] = json.loads(line)
        return result


def start_inproc(args: argparse.Namespace, model: ModelSpec, run_dir: Path) -> InProc:
    cmd = [
        "taskset", "-c", args.server_cpu, str(PYTHON), str(HERE / "inproc.py"),
        f"--version-dir={model.version_dir(args.models_dir)}", f"--input={model.input}",
        f"--row-shape={','.join(map(str, model.row_shape))}", "--intra=1", "--inter=1",
    ]  # fmt: skip
    err = (run_dir / f"inproc-{model.name}.log").open("w")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO
    )
    return InProc(model, proc)


def wait_inproc(worker: InProc) -> None:
    assert worker.proc.stdout is not None
    line = worker.proc.stdout.readline()
    if line.strip() != "READY":
        sys.exit(f"in-process worker for {worker.model.name} failed to start: {line!r}")


# --------------------------------------------------------------------------- wrk cells

NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


def run_wrk(
    args: argparse.Namespace, url: str, conc: int, seconds: float, body: Path
) -> dict[str, Any]:
    """One wrk run pinned to the load core; returns the done() JSON plus derived fields."""
    cmd = [
        "taskset", "-c", args.load_cpu, "wrk", "-t1", f"-c{conc}", f"-d{seconds:g}s",
        "--latency", "--timeout", "10s", "-s", str(HERE / "post.lua"), url,
    ]  # fmt: skip
    env = dict(os.environ, BENCH_BODY_FILE=str(body))
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, timeout=seconds + 60
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        return {"failed": f"wrk exited {proc.returncode}: {proc.stderr.strip()[:300]}"}
    r: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    m = NON2XX_RE.search(proc.stdout)
    r["non2xx"] = int(m.group(1)) if m else 0
    r["errors"] = r["non2xx"] + sum(r[k] for k in r if k.startswith("err_") and k != "err_status")
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["p50_ms"], r["p99_ms"] = r["p50_us"] / 1e3, r["p99_us"] / 1e3
    if r["errors"]:
        r["failed"] = (
            f"{r['errors']} errors (non-2xx {r['non2xx']}, connect {r['err_connect']}, "
            f"read {r['err_read']}, write {r['err_write']}, timeout {r['err_timeout']})"
        )
    return r


def run_cell(
    args: argparse.Namespace, server: Server, model: ModelSpec, conc: int, body: Path
) -> dict[str, Any]:
    before = server.tally()
    cpu0 = server.cpu_seconds()
    r = run_wrk(args, server.url(model.name), conc, args.duration, body)
    cpu1 = server.cpu_seconds()
    cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
    if server.proc.poll() is not None:
        sys.exit(f"server ({server.mode}) died during a cell; see {server.log}")
    after = server.tally()
    d = {k: after[k] - before[k] for k in after}
    if server.variant.batching:
        r["mean_batch"] = d["rows"] / d["batches"] if d["batches"] else None
    r["gc2_n"], r["gc2_ms"] = d["gc2_n"], d["gc2_s"] * 1e3
    r["gc_n"], r["gc_ms"] = d["gc_n"], d["gc_s"] * 1e3
    if r.get("requests"):
        seconds = r["duration_us"] / 1e6
        r["cpu_us_per_req"] = cpu["total"] * 1e6 / r["requests"]
        r["cpu_util"] = cpu["total"] / seconds
        r["cpu_threads"] = {k: v / seconds for k, v in cpu.items() if k != "total" and v > 0}
    r["gc_garbage_per_req"] = d["gc_collected"] / max(r.get("requests", 0), 1)
    return r


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    cells: list[dict[str, Any]] = field(default_factory=list)  # model, conc, mode, round, ...
    inproc: list[dict[str, Any]] = field(default_factory=list)  # model, batch, round, ...


@contextlib.contextmanager
def bench_lock(log: TextIO) -> Iterator[None]:
    with LOCK.open("a") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.write(f"waiting for {LOCK} (another benchmark is measuring)...\n")
            log.flush()
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def measure(args: argparse.Namespace, run_dir: Path, bodies: dict[str, Path]) -> Results:
    servers: dict[str, Server] = {}
    workers: dict[str, InProc] = {}
    res = Results()
    try:
        for v in args.variants:
            servers[v.name] = start_server(args, v, run_dir)
        for m in args.model_specs:
            workers[m.name] = start_inproc(args, m, run_dir)
        for s in servers.values():
            wait_ready(s, args.model_specs)
        for w in workers.values():
            wait_inproc(w)
        for s in servers.values():
            for m in args.model_specs:
                run_wrk(args, s.url(m.name), max(args.conc), args.warmup, bodies[m.name])
        for rnd in range(args.rounds):
            progress(f"round {rnd + 1}/{args.rounds}")
            run_round(args, rnd, servers, workers, bodies, res)
    finally:
        for w in workers.values():
            if w.proc.stdin is not None:
                w.proc.stdin.close()
            stop(w.proc)
        for s in servers.values():
            stop(s.proc)
    return res


def run_round(
    args: argparse.Namespace,
    rnd: int,
    servers: dict[str, Server],
    workers: dict[str, InProc],
    bodies: dict[str, Path],
    res: Results,
) -> None:
    modes = args.modes if rnd % 2 == 0 else args.modes[::-1]
    for m in args.model_specs:
        for batch in m.inproc_batches:
            r = workers[m.name].measure(batch, args.duration, 0.3)
            res.inproc.append({"model": m.name, "round": rnd, **r})
            progress(f"  {m.name} in-process batch {batch}: {r['rows_per_s']:,.0f} rows/s")
        for conc in args.conc:
            for mode in modes:
                r = run_cell(args, servers[mode], m, conc, bodies[m.name])
                res.cells.append({"model": m.name, "conc": conc, "mode": mode, "round": rnd, **r})
                progress("  " + report.cell_line(m.name, conc, mode, r))


def progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def environment(args: argparse.Namespace, servers_flags: list[str]) -> dict[str, str]:
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], check=False, capture_output=True, text=True, cwd=REPO)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "--short", "HEAD")
        + (" (+ uncommitted changes)" if dirty else ""),
        "loadavg_before": Path("/proc/loadavg").read_text().split(" ")[0],
        "cpus": str(os.cpu_count()),
        "server": f"taskset -c {args.server_cpu} python -m app {' '.join(servers_flags)}",
        "load": f"taskset -c {args.load_cpu} wrk -t1 -c<conc> -d{args.duration:g}s --latency"
        " -s scripts/bench/post.lua",
        **{f"variant {v.name}": v.describe() for v in args.variants},
        "rounds": f"{args.rounds} x {args.duration:g} s per cell, interleaved; medians",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / f"run-{stamp}"
    run_dir.mkdir()
    bodies = {}
    for m in args.model_specs:
        bodies[m.name] = run_dir / f"body-{m.name}.json"
        bodies[m.name].write_bytes(m.body())
    with bench_lock(sys.stderr):
        env = environment(args, ["--model_repository=models", *tf_flags(), *args.server_flag])
        res = measure(args, run_dir, bodies)
    env["loadavg_after"] = Path("/proc/loadavg").read_text().split(" ")[0]
    if args.label:
        env["label"] = args.label
    text = report.render(
        env, res.cells, res.inproc, args.modes, args.conc, [m.name for m in args.model_specs]
    )
    out = args.out / f"bench-{stamp}.md"
    out.write_text(text)
    (run_dir / "raw.json").write_text(
        json.dumps({"env": env, "cells": res.cells, "inproc": res.inproc}, indent=1)
    )
    sys.stdout.write(text)
    progress(f"\nwritten: {out} (raw data and server logs in {run_dir})")
    return 1 if any("failed" in c for c in res.cells) else 0


if __name__ == "__main__":
    sys.exit(main())
