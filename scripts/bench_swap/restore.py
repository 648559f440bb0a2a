"""Compare TF's one-op restore with hotserve's paced, chunked restore (app/runtime/restore.py).

    .venv/bin/python scripts/bench_swap/restore.py MODEL_DIR [--rounds 3] [--chunks 262144,...]

Each measurement runs in a fresh child process (peak RSS is per process) that first loads the
model once with TF (as a server swapping versions, TF's process-wide first-run work is done;
for a 1 GiB model this doubles the child's memory), then imports the graph and times only
the restore, in the calling thread (InlineRuns, as the server loads). Reports,
per method: wall and thread CPU seconds of the restore, number of units, the longest and the
median unit, and the child's peak RSS above its RSS before the restore. Rounds alternate the
methods so that page-cache and machine noise fall on both; medians are printed. Nothing is
written; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4


def measure(path: Path, method: str, chunk: int, bank: int) -> dict[str, float]:
    """One restore of `path` in this process (imports TensorFlow); returns the numbers."""
    sys.path.insert(0, str(REPO))
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl

    from app.runtime import restore
    from app.runtime.saved_model import InlineRuns

    restore.CHUNK_BYTES = chunk or restore.CHUNK_BYTES
    restore.BANK = bank or restore.BANK
    # As in a server swapping versions: TensorFlow's process-wide first-run work is done.
    warm = tf.Graph()
    with tf.compat.v1.Session(graph=warm) as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        loader = loader_impl.SavedModelLoader(str(path))
        saver, _ = loader.load_graph(graph, ["serve"])
        runs = InlineRuns(session)
        before = _rss_kib()
        wall, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
        if method == "tf":
            loader.restore_variables(runs, saver)
            units = [time.perf_counter() - wall]
        else:
            info = restore.restore(
                session,
                saver,
                path / "variables" / "variables",
                fallback=lambda: loader.restore_variables(runs, saver),
            )
            assert info.how == "chunked", info.reason
            units = info.unit_times
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        process = time.process_time() - process
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "process_cpu_s": process,
        "units": len(units),
        "longest_ms": max(units) * 1e3,
        "median_ms": statistics.median(units) * 1e3,
        "p99_ms": sorted(units)[int(0.99 * (len(units) - 1))] * 1e3,
        "peak_rss_above_mib": (peak - before) / 1024,
    }


def _child(path: Path, method: str, chunk: int, bank: int) -> dict[str, float]:
    command = [__file__, str(path), "--child", method, "--chunks", str(chunk), "--banks", str(bank)]
    done = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--chunks", default="0", help="comma-separated unit sizes in bytes (0: CHUNK_BYTES)"
    )
    parser.add_argument(
        "--banks", default="0", help="comma-separated restore.BANK values (0: its own)"
    )
    parser.add_argument("--child", choices=["tf", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    banks = [int(b) for b in args.banks.split(",")]
    if args.child:
        print(json.dumps(measure(args.model, args.child, chunks[0], banks[0])))
        return
    cells = [("tf", chunks[0], banks[0])]
    cells += [("chunked", c, b) for c in chunks for b in banks]
    results: dict[tuple[str, int, int], list[dict[str, float]]] = {cell: [] for cell in cells}
    for round_ in range(args.rounds):
        for cell in cells if round_ % 2 == 0 else cells[::-1]:
            results[cell].append(_child(args.model, *cell))
    for (method, chunk, bank), runs in results.items():
        medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        label = (
            "tf"
            if method == "tf"
            else f"chunked {chunk // 1024 or 'CHUNK_BYTES'} KiB bank {bank or 'BANK'}"
        )
        print(label.ljust(26), "  ".join(f"{k}={v:.4g}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
