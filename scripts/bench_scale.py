#!/usr/bin/env python3
"""Scale-out benchmark (issue 10), one run: workers, swap skew, and hundreds of models.

1. `--workers 1` vs `--workers 2`: req/s of `:predict` at c=64 (wrk, keep-alive, batching on)
   on both demo models, RSS of every worker, and the skew of swaps under load (each new version
   of half_plus_two published while wrk runs; the supervisor logs first/last worker switch).
   Rounds alternate the order of the two servers, so drift spreads over both.
2. Many models: `--many` copies of half_plus_two in one models.config (and `--many // 4` to see
   how each figure grows): seconds from process start until /readyz, RSS, CPU busy while idle
   (nothing to do but watch and poll), and one config reload that removes 10 models and adds 10
   while wrk keeps one of the others busy (time until the 10 new are AVAILABLE, failed requests,
   p99 during the reload against the steady p99 just before).

Nothing is pinned (two workers need both cores; wrk shares them): on a shared 2-core machine
absolute figures drift, so read the ratios. Every server started is stopped on every path.

    .venv/bin/python scripts/bench_scale.py                     # ~6 min
    .venv/bin/python scripts/bench_scale.py --duration 2 --rounds 1 --many 40   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
POST_LUA = REPO / "scripts" / "bench" / "post.lua"
DEMO = REPO / "models"
SKEW = re.compile(r"model (\S+) version (\d+): the default in all (\d+) workers; skew ([\d.]+) ms")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class Server:
    """`python -m app ...` on 127.0.0.1 in its own process group; `stop` is idempotent."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = log.open("wb")
        env = {**os.environ, "HOTSERVE_HOST": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [sys.executable, "-m", "app", f"--rest_api_port={self.port}", *args]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._out, stderr=self._out, start_new_session=True
        )

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds from start until /readyz answered 200."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}; see {self.log}")
            if get(self.url + "/readyz")[0] == 200:
                return time.monotonic() - self.started
            time.sleep(0.05)
        raise TimeoutError(f"not ready in {timeout}s; see {self.log}")

    def pids(self) -> list[int]:
        """The serving processes: the workers under a supervisor, else the server itself."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        kids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return kids or [self.proc.pid]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group
        self._out.close()


@contextlib.contextmanager
def server(args: list[str], log: Path) -> Iterator[Server]:
    srv = Server(args, log)
    try:
        yield srv
    finally:
        srv.stop()


def rss_mib(pid: int) -> float:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE / 2**20


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (TensorFlow's libraries) split between processes."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime (all threads)
    return total / TICKS


def wrk(url: str, body: Path, conc: int, seconds: float) -> dict[str, Any]:
    cmd = ["wrk", "-t2", f"-c{conc}", f"-d{seconds:g}s", "--latency", "-s", str(POST_LUA), url]
    env = {**os.environ, "BENCH_BODY_FILE": str(body)}
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stderr[:300]}")
    r: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out.stdout)
    r["errors"] = (int(non2xx.group(1)) if non2xx else 0) + sum(
        r[k] for k in ("err_connect", "err_read", "err_write", "err_timeout")
    )
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def bodies(work: Path) -> dict[str, Path]:
    import random

    rng = random.Random(0)
    h2, mlp = work / "h2.json", work / "mlp.json"
    h2.write_text('{"instances": [1.0]}')
    row = ",".join(f"{rng.random():.4f}" for _ in range(784))
    mlp.write_text(f'{{"instances": [[{row}]]}}')
    return {"half_plus_two": h2, "mlp": mlp}


def publish(src: Path, base: Path, version: int) -> None:
    tmp = base / f".tmp-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, base / str(version))


# ---- 1. workers ---------------------------------------------------------------------------


def workers_phase(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    repo = work / "repo"
    for name in ("half_plus_two", "mlp"):
        shutil.copytree(DEMO / name, repo / name)
    config = work / "workers.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'config {{ name: "{n}" base_path: "{repo / n}" model_platform: "tensorflow" }}\n'
            for n in ("half_plus_two", "mlp")
        )
        + "}\n"
    )
    body = bodies(work)
    cells: list[dict[str, Any]] = []
    skews: list[float] = []
    next_version = 3
    for rnd in range(args.rounds):
        order = (1, 2) if rnd % 2 == 0 else (2, 1)
        for workers in order:
            log = work / f"workers{workers}-r{rnd}.log"
            flags = [f"--model_config_file={config}", "--enable_batching", f"--workers={workers}",
                     "--version_settle_seconds=0.2"]  # fmt: skip
            with server(flags, log) as srv:
                srv.wait_ready()
                for model in ("half_plus_two", "mlp"):
                    url = f"{srv.url}/v1/models/{model}:predict"
                    wrk(url, body[model], 64, 1)  # warm the connections and batchers
                    r = wrk(url, body[model], 64, args.duration)
                    cells.append({"workers": workers, "model": model, "round": rnd,
                                  "rps": r["rps"], "p99_ms": r["p99_us"] / 1e3,
                                  "errors": r["errors"]})  # fmt: skip
                    print(f"  workers={workers} {model}: {r['rps']:.0f} req/s", flush=True)
                rss = [rss_mib(p) for p in srv.pids()]
                pss = [pss_mib(p) for p in srv.pids()]
                cells.append({"workers": workers, "round": rnd, "rss_mib": rss, "pss_mib": pss})
                if workers > 1:
                    skews += swaps_under_load(args, srv, repo, body, next_version)
                    next_version += args.swaps
    return {"cells": cells, "skews_ms": skews}


def swaps_under_load(
    args: argparse.Namespace, srv: Server, repo: Path, body: dict[str, Path], first: int
) -> list[float]:
    """Publish `args.swaps` versions of half_plus_two while wrk runs; the skews logged."""
    url = f"{srv.url}/v1/models/half_plus_two:predict"
    seconds = 4.0 * args.swaps + 4
    load = subprocess.Popen(
        ["wrk", "-t2", "-c64", f"-d{seconds:g}s", "-s", str(POST_LUA), url],
        env={**os.environ, "BENCH_BODY_FILE": str(body["half_plus_two"])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for version in range(first, first + args.swaps):
            time.sleep(1.0)
            publish(DEMO / "half_plus_two" / "2", repo / "half_plus_two", version)
            deadline = time.monotonic() + 60
            while not any(m.group(2) == str(version) for m in SKEW.finditer(srv.log.read_text())):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"version {version} was not published; see {srv.log}")
                time.sleep(0.1)
    finally:
        load.wait()
    return [
        float(m.group(4))
        for m in SKEW.finditer(srv.log.read_text())
        if m.group(1) == "half_plus_two" and first <= int(m.group(2)) < first + args.swaps
    ]


# ---- 2. many models -----------------------------------------------------------------------


def models_config(base: Path, names: list[str]) -> str:
    entries = "".join(
        f'config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
        for n in names
    )
    return "model_config_list {\n" + entries + "}\n"


def many_phase(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = work / "many"
    total = args.many + 10
    for i in range(total):
        shutil.copytree(DEMO / "half_plus_two" / "1", base / f"m{i}" / "1")
    body = bodies(work)["half_plus_two"]
    results: dict[str, Any] = {}
    for count in (1, args.many // 4, args.many):
        config = work / f"many-{count}.config"
        config.write_text(models_config(base, [f"m{i}" for i in range(count)]))
        flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]
        with server(flags, work / f"many-{count}.log") as srv:
            ready = srv.wait_ready()
            time.sleep(3)  # let start-up work finish before measuring idle
            pids = srv.pids()
            cpu0, t0 = cpu_seconds(pids), time.monotonic()
            time.sleep(args.idle)
            idle = (cpu_seconds(pids) - cpu0) / (time.monotonic() - t0)
            cell = {"ready_s": ready, "rss_mib": rss_mib(pids[0]), "idle_cpu": idle}
            print(f"  {count} models: ready {ready:.1f}s, {cell['rss_mib']:.0f} MiB, "
                  f"idle {idle * 100:.1f}% of a core", flush=True)  # fmt: skip
            if count == args.many:
                cell["reload"] = reload(srv, config, base, body, count)
            results[str(count)] = cell
    return results


def reload(srv: Server, config: Path, base: Path, body: Path, count: int) -> dict[str, Any]:
    """Remove m0..m9, add m<count>..m<count+9> while wrk keeps m<count//2> busy."""
    url = f"{srv.url}/v1/models/m{count // 2}:predict"
    steady = wrk(url, body, 8, 5)
    load = subprocess.Popen(
        ["wrk", "-t1", "-c8", "-d8s", "--latency", "-s", str(POST_LUA), url],
        env={**os.environ, "BENCH_BODY_FILE": str(body)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(1.5)
        names = [f"m{i}" for i in range(10, count + 10)]
        config.write_text(models_config(base, names))
        started = time.monotonic()
        added = [f"m{i}" for i in range(count, count + 10)]
        while not all(get(f"{srv.url}/v1/models/{n}")[1].count(b"AVAILABLE") == 1 for n in added):
            if time.monotonic() - started > 120:
                raise TimeoutError("the added models did not become AVAILABLE")
            time.sleep(0.05)
        added_s = time.monotonic() - started
        while any(b"AVAILABLE" in get(f"{srv.url}/v1/models/m{i}")[1] for i in range(10)):
            time.sleep(0.05)
        removed_s = time.monotonic() - started
    finally:
        out, _ = load.communicate()
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    during = json.loads(line.removeprefix("BENCH_JSON "))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + during["err_timeout"] + during["err_read"]
    return {
        "added_available_s": added_s,
        "removed_s": removed_s,
        "errors": errors,
        "p99_steady_ms": steady["p99_us"] / 1e3,
        "p99_reload_ms": during["p99_us"] / 1e3,
        "rps_steady": steady["rps"],
        "rps_reload": during["requests"] / (during["duration_us"] / 1e6),
    }


# ---- report -------------------------------------------------------------------------------


def summary(res: dict[str, Any]) -> str:
    lines = ["## workers (c=64, batching on; medians over rounds)", ""]
    w = res["workers"]
    for model in ("half_plus_two", "mlp"):
        by = {n: statistics.median(c["rps"] for c in w["cells"]
                                   if c.get("model") == model and c["workers"] == n)
              for n in (1, 2)}  # fmt: skip
        lines.append(f"- {model}: 1 worker {by[1]:.0f} req/s, 2 workers {by[2]:.0f} req/s "
                     f"({by[2] / by[1]:.2f}x)")  # fmt: skip
    for n in (1, 2):
        mem = [c for c in w["cells"] if "rss_mib" in c and c["workers"] == n][-1]
        lines.append(
            f"- memory with {n} worker(s), per worker: RSS "
            + ", ".join(f"{x:.0f}" for x in mem["rss_mib"])
            + " MiB; PSS "
            + ", ".join(f"{x:.0f}" for x in mem["pss_mib"])
            + " MiB"
        )
    if w["skews_ms"]:
        s = sorted(w["skews_ms"])
        lines.append(
            f"- swap skew over {len(s)} swaps under load: median {statistics.median(s):.2f} ms,"
            f" max {s[-1]:.2f} ms"
        )
    errors = sum(c.get("errors", 0) for c in w["cells"])
    lines += [f"- failed requests: {errors}", "", "## many models", ""]
    many = res["many"]
    for count, cell in many.items():
        lines.append(f"- {count} models: AVAILABLE after {cell['ready_s']:.1f} s, "
                     f"RSS {cell['rss_mib']:.0f} MiB, idle CPU {cell['idle_cpu'] * 100:.1f}% "
                     "of a core")  # fmt: skip
    counts = sorted(int(c) for c in many)
    lo, hi = many[str(counts[1])], many[str(counts[-1])]
    per = (hi["rss_mib"] - lo["rss_mib"]) / (counts[-1] - counts[1])
    lines.append(f"- marginal memory: {per:.2f} MiB per model ({counts[1]} -> {counts[-1]})")
    r = hi.get("reload")
    if r:
        lines.append(
            f"- reload -10/+10 under load: new ones AVAILABLE in {r['added_available_s']:.1f} s,"
            f" removed gone in {r['removed_s']:.1f} s, {r['errors']} failed requests,"
            f" p99 {r['p99_reload_ms']:.1f} ms vs {r['p99_steady_ms']:.1f} ms steady"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--swaps", type=int, default=3, help="swaps under load per 2-worker round")
    parser.add_argument("--many", type=int, default=200, help="models in the big config")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.add_argument("--skip", choices=("workers", "many"), default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hotserve-scale-"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    try:
        if args.skip != "workers":
            print("workers:", flush=True)
            results["workers"] = workers_phase(args, work)
        if args.skip != "many":
            print("many models:", flush=True)
            results["many"] = many_phase(args, work)
    finally:
        results["machine"]["load_after"] = os.getloadavg()
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
        logs = sorted(work.glob("*.log"))
        print(f"logs: {', '.join(map(str, logs))}" if logs else "", flush=True)
    if "workers" in results and "many" in results:
        print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
