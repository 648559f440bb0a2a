"""What moving large-request decoding off the event loop costs and buys (issue 7, section 4).

Serves the demo repository (`models/`: mlp, half_plus_two) in a server process, once with the
default thresholds ("offload") and once with offloading disabled ("inline": every body decoded
on the loop, as before), rounds interleaved, and measures:

1. small requests alone: one keep-alive connection, sequential 784-float MLP predicts;
   p50 latency and req/s; the ratio offload / inline is what small requests pay;
2. small requests during one large request: a thread sends the large body while the main thread
   sends small MLP predicts back to back; reported: how many small requests completed while the
   large one was in flight, their p50 and max latency, and the large request's own time.
   Large bodies: `numeric` = MLP rows (one orjson call + numpy), `examples` = a regress body
   with many tf.Examples (per-example Python work + protobuf serialization).

With `--baseline DIR` (a checkout of the code before, e.g. `git worktree add /tmp/base main`),
a third server runs from DIR, so "alone" also reports what small requests pay against it.

Usage: .venv/bin/python scripts/bench/offload.py [--rounds 2] [--small 1500] [--baseline DIR]
Server pinned to core 0, client to core 1 when the machine has two cores or more.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVER = """
import dataclasses, sys, uvicorn
from app.main import create_app
from app.settings import Settings
app = create_app(Settings(model_repository=sys.argv[2]))
if sys.argv[3] == "inline":  # every body decoded on the loop
    app.tf_serving_rest.options = dataclasses.replace(
        app.tf_serving_rest.options, offload_bytes=1 << 62, offload_elements=1 << 62,
        offload_examples=1 << 62)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(mode: str, checkout: Path = REPO) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, "-c", SERVER, str(port), str(REPO / "models"), mode]
    if (os.cpu_count() or 1) >= 2:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if post(port, "GET", "/readyz", None)[0] == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            time.sleep(0.2)
        else:
            raise TimeoutError("server not ready")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(
    port: int, method: str, path: str, body: bytes | None, conn: Any = None
) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


SMALL = json.dumps({"instances": [[0.5] * 784]}).encode()
SMALL_PATH = "/v1/models/mlp:predict"


def small_alone(port: int, n: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(50):  # warm up
        post(port, "POST", SMALL_PATH, SMALL, conn)
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        status, _ = post(port, "POST", SMALL_PATH, SMALL, conn)
        lat.append(time.perf_counter() - t)
        assert status == 200
    total = time.perf_counter() - start
    conn.close()
    return {"p50_ms": statistics.median(lat) * 1e3, "rps": n / total}


def big_bodies() -> dict[str, tuple[str, bytes]]:
    rows = [[(i % 97) / 97.0] * 784 for i in range(4000)]  # ~60 MiB of JSON numbers
    examples = [{"x": float(i % 13)} for i in range(150_000)]  # ~2 MiB, 150k tf.Examples
    return {
        "numeric": ("/v1/models/mlp:predict", json.dumps({"instances": rows}).encode()),
        "examples": (
            "/v1/models/half_plus_two:regress",
            json.dumps({"signature_name": "regress_x_to_y", "examples": examples}).encode(),
        ),
    }


def during_big(port: int, path: str, body: bytes) -> dict[str, float]:
    done = threading.Event()
    big: dict[str, float] = {}

    def send() -> None:
        t = time.perf_counter()
        status, _ = post(port, "POST", path, body)
        big["seconds"], big["status"] = time.perf_counter() - t, status
        done.set()

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    post(port, "POST", SMALL_PATH, SMALL, conn)
    sender = threading.Thread(target=send)
    sender.start()
    lat = []
    while not done.is_set():
        t = time.perf_counter()
        post(port, "POST", SMALL_PATH, SMALL, conn)
        if not done.is_set():
            lat.append(time.perf_counter() - t)
    sender.join()
    conn.close()
    assert big["status"] == 200, big
    return {
        "big_s": big["seconds"],
        "small_n": len(lat),
        "small_p50_ms": statistics.median(lat) * 1e3 if lat else float("nan"),
        "small_max_ms": max(lat) * 1e3 if lat else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--small", type=int, default=1500)
    parser.add_argument("--baseline", type=Path, default=None)
    args = parser.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    bodies = big_bodies()
    modes = ["inline", "offload"] + (["baseline"] if args.baseline else [])
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            checkout = args.baseline if mode == "baseline" else REPO
            with server(mode, checkout) as port:
                row: dict[str, Any] = {"alone": small_alone(port, args.small)}
                for kind, (path, body) in bodies.items():
                    row[kind] = during_big(port, path, body)
                results[mode].append(row)
                print(f"round {r} {mode}: {json.dumps(row)}", flush=True)
    report(results, bodies)


def report(results: dict[str, list[dict[str, Any]]], bodies: dict[str, Any]) -> None:
    def med(mode: str, *keys: str) -> float:
        values = []
        for row in results[mode]:
            value: Any = row
            for key in keys:
                value = value[key]
            values.append(value)
        return float(statistics.median(values))

    ratios = [
        on["alone"]["p50_ms"] / off["alone"]["p50_ms"]
        for on, off in zip(results["offload"], results["inline"], strict=True)
    ]
    print("\nsmall requests alone (MLP, 1 connection, sequential)")
    print("| mode | p50 ms | req/s |\n|---|---|---|")
    for mode in results:
        print(f"| {mode} | {med(mode, 'alone', 'p50_ms'):.3f} | {med(mode, 'alone', 'rps'):.0f} |")
    print(f"p50 offload / inline per round: {', '.join(f'{x:.3f}' for x in ratios)}")
    if results.get("baseline"):
        base = [
            on["alone"]["p50_ms"] / old["alone"]["p50_ms"]
            for on, old in zip(results["offload"], results["baseline"], strict=True)
        ]
        print(f"p50 offload / baseline per round: {', '.join(f'{x:.3f}' for x in base)}")
    print("\nsmall requests while one large request is in flight")
    print("| large body | mode | large s | small done meanwhile | small p50 ms | small max ms |")
    print("|---|---|---|---|---|---|")
    for kind, (_, body) in bodies.items():
        for mode in results:
            print(
                f"| {kind} ({len(body) / 2**20:.1f} MiB) | {mode} | {med(mode, kind, 'big_s'):.2f} "
                f"| {med(mode, kind, 'small_n'):.0f} | {med(mode, kind, 'small_p50_ms'):.2f} "
                f"| {med(mode, kind, 'small_max_ms'):.0f} |"
            )


if __name__ == "__main__":
    main()
