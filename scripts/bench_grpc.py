#!/usr/bin/env python3
"""gRPC beside REST (issue 8): req/s, p50 and p99 of Predict on the demo models, one run.

Same layout as scripts/bench.py, whose pieces it reuses: two hotserve servers (batching off and
on) pinned to core 0, each serving REST and gRPC; the load generator pinned to core 1 — wrk for
REST (`:predict`, one row), h2load (nghttp2-client) for gRPC, replaying one framed
`PredictRequest` (the same row, as `tf.make_tensor_proto` encodes it) on
`/tensorflow.serving.PredictionService/Predict`. Both are C load generators with one thread, so
neither is the bottleneck the way a Python client on the other core would be. Every (model,
concurrency, batching) cell is measured over REST then gRPC, adjacent, the order alternating by
round; the report gives medians over rounds and the median of the per-round gRPC/REST ratios.

h2load counts HTTP/2 responses: a gRPC error is still HTTP 200. Each cell's response bytes are
therefore checked against the size of a successful answer (an error carries no message), and
a sanity call with the official stubs precedes the run.

    apt-get install -y nghttp2-client                    # h2load
    .venv/bin/python scripts/bench_grpc.py               # ~6 min
    .venv/bin/python scripts/bench_grpc.py --duration 2 --rounds 1 --concurrency 1,16
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench

REPO = bench.REPO
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
DATA_RE = re.compile(r"traffic: .*\((\d+)\) data")
DONE_RE = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="half_plus_two,mlp")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=REPO / "bench-results")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    args = p.parse_args(argv)
    args.model_specs = [bench.MODELS[m] for m in args.models.split(",") if m]
    args.conc = [int(c) for c in args.concurrency.split(",")]
    # What bench.start_server reads.
    args.server_flag = ["--log_level=warning"]
    defaults = bench.Variant("", False)
    args.variants = [
        replace(defaults, name=m, batching=m == "on", flags=(f"--port={bench.free_port()}",))
        for m in ("off", "on")
    ]
    return args


def grpc_port(server: bench.Server) -> int:
    return int(server.variant.flags[0].removeprefix("--port="))


def grpc_body(model: bench.ModelSpec) -> bytes:
    """One framed gRPC message: compressed-flag 0, big-endian length, PredictRequest bytes."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    if model.row_shape:
        rng = np.random.default_rng(0)
        row = np.round(rng.random((1, *model.row_shape)), 4).astype(np.float32)
    else:
        row = np.array([1.0], np.float32)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model.name
    req.inputs[model.input].CopyFrom(tf.make_tensor_proto(row))
    msg = req.SerializeToString()
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def sanity(server: bench.Server, model: bench.ModelSpec, body: bytes) -> int:
    """Call Predict once with the official stubs; return the framed answer's size in bytes."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    req = predict_pb2.PredictRequest.FromString(body[5:])
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(server)}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        resp = stub.Predict(req, timeout=30)
    return 5 + len(resp.SerializeToString())


def run_h2load(
    args: argparse.Namespace, port: int, conc: int, seconds: float, body: Path, log: Path
) -> dict[str, Any]:
    cmd = [
        "taskset", "-c", args.load_cpu, "h2load", "-t1", f"-c{conc}", "-m1", f"-D{seconds:g}",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log}", f"http://127.0.0.1:{port}{PREDICT_PATH}",
    ]  # fmt: skip
    log.unlink(missing_ok=True)  # h2load appends
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        return {"failed": f"h2load exited {proc.returncode}: {proc.stderr.strip()[:300]}"}
    rows = [ln.split("\t") for ln in log.read_text().splitlines() if ln.strip()]
    ok = [(int(r[0]), int(r[2])) for r in rows if r[1] == "200"]
    if not ok:
        return {"failed": f"no successful responses: {proc.stdout[-300:]}"}
    starts = [s for s, _ in ok]
    span = (max(s + e for s, e in ok) - min(starts)) / 1e6
    lat = np.array([e for _, e in ok]) / 1e3
    m = DATA_RE.search(proc.stdout)
    done = DONE_RE.search(proc.stdout)
    return {
        "requests": len(ok),
        "errors": len(rows) - len(ok),
        "rps": len(ok) / span,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "data_bytes": int(m.group(1)) if m else 0,
        "done": int(done.group(1)) if done else len(rows),
    }


def grpc_cell(
    args: argparse.Namespace, server: bench.Server, conc: int, body: Path, answer: int, log: Path
) -> dict[str, Any]:
    r = run_h2load(args, grpc_port(server), conc, args.duration, body, log)
    if "failed" not in r:
        # Responses that carried no full answer were gRPC errors (HTTP 200 all the same).
        answered = r["data_bytes"] // answer
        if r["errors"] or answered < r["done"]:
            r["failed"] = f"{r['errors']} HTTP errors, {r['done'] - answered} gRPC errors"
    return r


def measure(args: argparse.Namespace, run_dir: Path) -> list[dict[str, Any]]:
    servers: dict[str, bench.Server] = {}
    cells: list[dict[str, Any]] = []
    json_bodies: dict[str, Path] = {}
    grpc_bodies: dict[str, Path] = {}
    answers: dict[tuple[str, str], int] = {}
    for m in args.model_specs:
        json_bodies[m.name] = run_dir / f"body-{m.name}.json"
        json_bodies[m.name].write_bytes(m.body())
        grpc_bodies[m.name] = run_dir / f"body-{m.name}.grpc"
        grpc_bodies[m.name].write_bytes(grpc_body(m))
    try:
        for v in args.variants:
            servers[v.name] = bench.start_server(args, v, run_dir)
        for s in servers.values():
            bench.wait_ready(s, args.model_specs)
            for m in args.model_specs:
                answers[(s.mode, m.name)] = sanity(s, m, grpc_bodies[m.name].read_bytes())
                bench.run_wrk(args, s.url(m.name), max(args.conc), args.warmup, json_bodies[m.name])
                run_h2load(args, grpc_port(s), max(args.conc), args.warmup,
                           grpc_bodies[m.name], run_dir / "warmup.log")  # fmt: skip
        for rnd in range(args.rounds):
            bench.progress(f"round {rnd + 1}/{args.rounds}")
            for m in args.model_specs:
                for conc in args.conc:
                    for mode in ("off", "on") if rnd % 2 == 0 else ("on", "off"):
                        s = servers[mode]
                        edges = ("REST", "gRPC") if (rnd + conc) % 2 == 0 else ("gRPC", "REST")
                        for edge in edges:
                            if edge == "REST":
                                r = bench.run_wrk(args, s.url(m.name), conc, args.duration,
                                                  json_bodies[m.name])  # fmt: skip
                            else:
                                log = run_dir / f"h2load-{m.name}-{conc}-{mode}-{rnd}.log"
                                r = grpc_cell(args, s, conc, grpc_bodies[m.name],
                                              answers[(mode, m.name)], log)  # fmt: skip
                                log.unlink(missing_ok=True)
                            cell = {"model": m.name, "conc": conc, "mode": mode, "edge": edge,
                                    "round": rnd, **r}  # fmt: skip
                            cells.append(cell)
                            bench.progress(f"  {line(cell)}")
    finally:
        for s in servers.values():
            bench.stop(s.proc)
    return cells


def line(c: dict[str, Any]) -> str:
    head = f"{c['model']:>13} c={c['conc']:<3} batching {c['mode']:<3} {c['edge']:<4}"
    if "failed" in c:
        return f"{head} FAILED {c['failed']}"
    return f"{head} {c['rps']:8,.0f} req/s  p50 {c['p50_ms']:6.2f} ms  p99 {c['p99_ms']:6.2f} ms"


HEADER = (
    "| model | conc | batching | REST req/s | REST p50 / p99 ms | gRPC req/s "
    "| gRPC p50 / p99 ms | gRPC/REST req/s |"
)


def summary(pick: list[dict[str, Any]], edge: str) -> str:
    """'req/s | p50 / p99' medians over rounds of one edge's successful cells."""
    ok = [c for c in pick if c["edge"] == edge and "failed" not in c]
    if not ok:
        return "failed | "
    rps, p50, p99 = (statistics.median(c[k] for c in ok) for k in ("rps", "p50_ms", "p99_ms"))
    return f"{rps:,.0f} | {p50:.2f} / {p99:.2f}"


def paired_ratio(pick: list[dict[str, Any]]) -> str:
    """Median over rounds of gRPC req/s / REST req/s measured adjacently."""
    ratios = []
    for rnd in sorted({c["round"] for c in pick}):
        pair = {c["edge"]: c for c in pick if c["round"] == rnd and "failed" not in c}
        if len(pair) == 2:
            ratios.append(pair["gRPC"]["rps"] / pair["REST"]["rps"])
    return f"{statistics.median(ratios):.2f}" if ratios else "-"


def render(args: argparse.Namespace, cells: list[dict[str, Any]], env: dict[str, str]) -> str:
    out = ["# gRPC beside REST: Predict, one row per request", ""]
    out += [f"- {k}: {v}" for k, v in env.items()]
    out += ["", HEADER, "|---|---|---|---|---|---|---|---|"]
    for m in args.model_specs:
        for conc in args.conc:
            for mode in ("off", "on"):
                key = (m.name, conc, mode)
                pick = [c for c in cells if (c["model"], c["conc"], c["mode"]) == key]
                out.append(
                    f"| {m.name} | {conc} | {mode} | {summary(pick, 'REST')} | "
                    f"{summary(pick, 'gRPC')} | {paired_ratio(pick)} |"
                )
    failed = [line(c) for c in cells if "failed" in c]
    if failed:
        out += ["", "Failed cells:", *[f"- {f}" for f in failed]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The servers must run THIS checkout's app (the shared venv's editable install may point
    # at another one).
    os.environ["PYTHONPATH"] = str(REPO)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / f"grpc-run-{stamp}"
    run_dir.mkdir(parents=True)
    env = {
        "loadavg_before": Path("/proc/loadavg").read_text().split(" ")[0],
        "server": f"taskset -c {args.server_cpu} hotserve (REST + gRPC), "
        f"{' '.join(bench.tf_flags())}; batching on = max_batch_size 64, "
        "batch_timeout_micros 0, num_batch_threads 1",
        "REST load": f"taskset -c {args.load_cpu} wrk -t1 -c<conc> -d{args.duration:g}s",
        "gRPC load": f"taskset -c {args.load_cpu} h2load -t1 -c<conc> -m1 -D{args.duration:g}",
        "rounds": f"{args.rounds} x {args.duration:g} s per cell, interleaved; medians",
    }
    with bench.bench_lock(sys.stderr):
        cells = measure(args, run_dir)
    env["loadavg_after"] = Path("/proc/loadavg").read_text().split(" ")[0]
    text = render(args, cells, env)
    out = args.out / f"bench-grpc-{stamp}.md"
    out.write_text(text)
    sys.stdout.write(text)
    bench.progress(f"\nwritten: {out}")
    return 1 if any("failed" in c for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
