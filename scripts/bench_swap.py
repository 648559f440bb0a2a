"""Hot-swap benchmark (issue 3): latency, failures, publish-to-serving and memory across swaps.

Usage (from the repository root; takes /tmp/hotserve-bench.lock itself, and also works under
`flock /tmp/hotserve-bench.lock ...`):

    .venv/bin/python scripts/bench_swap.py [--cycles 50] [--polled-cycles 6] [--quick]

What it does, on a 2-core machine: copies models/mlp/1 into a temporary base path, starts
`python -m app` pinned to core 0, and drives it with wrk pinned to core 1 (16 keep-alive
connections, one 784-float instance per request; every request logged with its send time,
latency and status by bench_swap/lua/record.lua). Then:

1. steady window (--steady s, after a 2 s warm-up): steady p50/p99;
2. --cycles swaps: app.publish.publish() of version k+1, wait until the status route shows it
   AVAILABLE and version k END; requests sent from publish() to END + 0.5 s are the swap
   window's; RSS of the server before the first publish (one version loaded) and after every
   swap;
3. publish-to-serving: publish() returning -> status route showing AVAILABLE, minus the load+warmup
   time the server logged for that version;
4. a second server without file events (--watch_file_events=false) and
   --file_system_poll_wait_seconds=1: --polled-cycles swaps, same measures;
5. memory (bench_swap/memory.py): for each --model-mib size (default 64 and 1024 MiB: a model
   holding one variable of that size, generated here) and each --memory-policies load policy, a
   fresh server under wrk load: RSS with one version loaded (before any publish), then after each
   of --memory-swaps swaps; target: within 10% of the one-version level. Only one such server
   runs at a time. --memory-only skips steps 1-4; --server-env NAME=VALUE (repeatable) sets the
   servers' environment, e.g. TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0 for TensorFlow's own allocator.

Per-swap mode (issue 12; `--swaps N`): for each `--models` entry (`mlp`, or the size in MiB of a
generated model, e.g. `mlp,64,1024`), one server and N swaps, every swap measured on its own
against an equally long steady window just before it: longest span without a completed
request, p50/p99, publish -> first answer of the new version, first new answers vs last old
ones, RSS vs one version, failures. bench_swap/perswap.py defines the windows. Batching is on
(bench.py's settings: max 64 rows, no timeout, one batch thread) unless --no-batching.
`--source DIR` runs the server from another checkout (e.g. a worktree of an older commit) with
the same benchmark code, for before/after runs. Writes bench-results/swaps-<label>-<time>.md
(summary + per-swap tables) and .json (raw per-swap numbers); with --keep-logs also each model's
server log and its request log (.npz: every request's send time, latency, status and answer
digest, monotonic seconds, and each swap's version, quiet-from, publish and old-END times).

    .venv/bin/python scripts/bench_swap.py --swaps 20 --models 64,1024 --label after
    .venv/bin/python scripts/bench_swap.py --swaps 20 --models 64,1024 --label before \
        --source /work/wt-swap-before

Prints a markdown report (targets, PASS/FAIL) and writes it to bench-results/swap-<time>.md;
--keep-logs also keeps the server logs and the request log (.npz) beside it. About 2.5 minutes
for steps 1-4 at the defaults, plus about 4 for step 5 (building and swapping the 1 GiB model).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from bench_swap import memory, models, perswap, report
from bench_swap.load import WrkLoad, plain_rate
from bench_swap.server import MODEL, REPO, Server, ServerOptions, StatusPoller, parse_log

from app.publish import publish

LOCK = Path("/tmp/hotserve-bench.lock")
SERVER_CPU, LOAD_CPU = 0, 1
WARMUP_S = 2.0
GAP_S = 0.5  # quiet time between one swap window's end and the next publish
STATE_TIMEOUT_S = 120.0
SRC = REPO / "models" / MODEL / "1"


def _inherited_lock_fd() -> int | None:
    """The descriptor of LOCK that `flock LOCK cmd` passed down to us, if any."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == str(LOCK):
                return int(name)
    return None


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Hold LOCK (flock): reuse the descriptor `flock LOCK cmd` passed down, or lock it."""
    inherited = _inherited_lock_fd()
    if inherited is not None:
        fcntl.flock(inherited, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: no wait
        yield
        return
    fd = os.open(LOCK, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {LOCK} (another benchmark is measuring)", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_body(path: Path) -> None:
    """One 784-float instance (fixed seed), as a TF Serving row-format :predict request."""
    import random

    rng = random.Random(0)
    row = ",".join(f"{rng.random():.4f}" for _ in range(784))
    path.write_text(f'{{"instances": [[{row}]]}}')


def swap(server: Server, poller: StatusPoller, base: Path, version: int) -> report.Cycle:
    started = time.monotonic()
    publish(SRC, base, version)
    published = time.monotonic()
    available = poller.wait_for(version, "AVAILABLE", STATE_TIMEOUT_S)
    old_end = poller.wait_for(version - 1, "END", STATE_TIMEOUT_S)
    cycle = report.Cycle(version, started, published, available, old_end)
    time.sleep(max(cycle.window[1] - time.monotonic(), 0.0))
    cycle.memory_kib = server.memory_kib()
    time.sleep(GAP_S)
    return cycle


def run_phase(args: argparse.Namespace, work: Path, *, events: bool, cycles: int) -> report.Phase:
    """One server, one wrk; steady window first when `events` (the main phase)."""
    name = "events" if events else "polled"
    base = work / f"base-{name}"
    publish(SRC, base, 1)
    log = work / f"server-{name}.log"
    options = ServerOptions(
        base, log, SERVER_CPU, args.poll_seconds, events, args.tf_threads, env=args.server_env
    )
    server = Server(options)
    try:
        server.wait_state(1, "AVAILABLE", STATE_TIMEOUT_S, every=0.2)
        phase = measure(server, args, work, base, cycles)
        return phase
    finally:
        server.stop()


def measure(
    server: Server, args: argparse.Namespace, work: Path, base: Path, cycles: int
) -> report.Phase:
    events = server.options.events
    url = f"{server.url}/v1/models/{MODEL}:predict"
    poller = StatusPoller(server.url)  # before the calibration: the same server load
    load: WrkLoad | None = None
    try:
        if events and args.calibrate:
            args.plain_rate = plain_rate(url, work / "body.json", args.connections, LOAD_CPU, 4)
        load = WrkLoad(url, work / "body.json", work, args.connections, LOAD_CPU)
        wall_minus_mono = time.time() - time.monotonic()
        steady = None
        if events:
            time.sleep(WARMUP_S)
            steady = (time.monotonic(), time.monotonic() + args.steady)
            time.sleep(args.steady)
        one_version = server.memory_kib()  # the baseline: one version, warmed, under load
        done = [swap(server, poller, base, v) for v in range(2, cycles + 2)]
        summary = load.stop()
    finally:
        poller.stop()
        if load is not None and load.proc.poll() is None:
            load.proc.kill()
            load.proc.wait()
    times = parse_log(server.log_text(), wall_minus_mono)
    for c in done:
        c.times = times.get(c.version, c.times)
        c.old_times = times.get(c.version - 1, c.old_times)
    phase = report.Phase(events, args.poll_seconds, done, load.requests(), summary, steady)
    phase.polls = poller.polls
    phase.one_version_kib = one_version
    return phase


def run_memory(args: argparse.Namespace, work: Path) -> list[memory.MemoryRun]:
    """Step 5: one server per (model size, load policy), one at a time; models built here."""
    opts = memory.MemoryOptions(
        SERVER_CPU,
        LOAD_CPU,
        connections=args.connections,
        tf_threads=args.tf_threads,
        env=args.server_env,
    )
    runs = []
    for mib in args.model_mib:
        src = models.build(work / f"model-{mib}mib", mib)
        for policy in args.memory_policies:
            runs.append(memory.measure(src, work, policy, args.memory_swaps, opts, mib))
            print(memory.table(runs)[-1], file=sys.stderr)
        shutil.rmtree(src)
    return runs


def context(args: argparse.Namespace) -> report.Context:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return report.Context(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        commit=commit or "unknown",
        cpu=f"{os.cpu_count()} cores, {cpu}",
        connections=args.connections,
        tf_threads=args.tf_threads,
        plain_rate=getattr(args, "plain_rate", None),
    )


def render(
    ctx: report.Context,
    main_phase: report.Phase | None,
    polled: report.Phase | None,
    runs: list[memory.MemoryRun],
) -> str:
    """The swap report (steps 1-4) with the memory step's section, or that section alone."""
    if main_phase is not None:
        text = report.render(ctx, main_phase, polled)
    else:
        text = (
            f"# Hot-swap benchmark (memory only), {ctx.date}\n\nCommit `{ctx.commit}`; {ctx.cpu}.\n"
        )
        text += "".join(f"\n- {n}" for n in ctx.notes) + "\n"
    if runs:
        text += "\n" + "\n".join(memory.render(runs)) + "\n"
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, help="swaps with file events (default 50)")
    p.add_argument("--polled-cycles", type=int, help="swaps without file events (6; 0: skip)")
    p.add_argument("--steady", type=float, help="steady window, s (default 10)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--poll-seconds", type=int, default=1, help="--file_system_poll_wait_seconds")
    p.add_argument("--tf-threads", type=int, default=1, help="TF intra/inter-op threads; 0 = auto")
    p.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="skip the plain-wrk rate measurement",
    )
    p.add_argument("--quick", action="store_true", help="dev run: 3 swaps, 3 s steady, 2 polled")
    p.add_argument(
        "--model-mib",
        default="64,1024",
        help="memory step: sizes (MiB) of the variable of the generated models, comma-separated; "
        "empty: skip the step",
    )
    p.add_argument("--memory-swaps", type=int, default=3, help="memory step: swaps per server")
    p.add_argument(
        "--memory-policies",
        default="availability_preserving,resource_preserving",
        help="memory step: --load_policy values, comma-separated",
    )
    p.add_argument("--memory-only", action="store_true", help="only the memory step")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of every server (repeatable)",
    )
    p.add_argument("--swaps", type=int, help="per-swap mode: swaps per model (see the doc)")
    p.add_argument("--models", default="mlp,64,1024", help="per-swap mode: mlp and/or MiB sizes")
    p.add_argument("--source", type=Path, default=REPO, help="per-swap mode: hotserve checkout")
    p.add_argument("--label", default="", help="per-swap mode: run name (default: the commit)")
    p.add_argument("--no-batching", dest="batching", action="store_false")
    p.add_argument(
        "--think-ms",
        type=int,
        default=0,
        help="per-swap mode: each connection's wait (ms) between an answer and its next "
        "request; 0 (default) keeps the serving core saturated",
    )
    p.add_argument(
        "--min-steady", type=float, default=2.0, help="per-swap mode: least quiet gap, s"
    )
    p.add_argument(
        "--model-cache",
        type=Path,
        default=Path("/tmp/hotserve-bench-models"),
        help="per-swap mode: where the model variants are built once and kept",
    )
    p.add_argument(
        "--server-flag", action="append", default=[], help="per-swap mode: extra server flag"
    )
    p.add_argument("--out", type=Path, default=REPO / "bench-results")
    p.add_argument("--keep-logs", action="store_true", help="copy the server logs to --out")
    args = p.parse_args(argv)
    defaults = (3, 2, 3.0) if args.quick else (50, 6, 10.0)
    for name, default in zip(("cycles", "polled_cycles", "steady"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.model_mib = [int(m) for m in args.model_mib.split(",") if m.strip()]
    args.memory_policies = [p for p in args.memory_policies.split(",") if p.strip()]
    args.server_env = tuple(tuple(kv.split("=", 1)) for kv in args.server_env)
    return args


def _describe(source: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(source), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def per_swap(args: argparse.Namespace) -> int:
    """Per-swap mode: every model in --models, one after the other, one server each."""
    source = args.source.resolve()
    label = args.label or _describe(source) or source.name
    opts = perswap.RunOptions(
        swaps=args.swaps,
        connections=args.connections,
        server_cpu=SERVER_CPU,
        load_cpu=LOAD_CPU,
        tf_threads=args.tf_threads,
        batching=args.batching,
        min_steady=args.min_steady,
        source=source,
        flags=tuple(args.server_flag),
        env=args.server_env,
        think_ms=args.think_ms,
        keep_logs=args.keep_logs,
    )
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out / f"swaps-{label}-{stamp}"
    results = []
    with bench_lock(), tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        work = Path(tmp)
        for key in keys:
            spec = perswap.prepare(key, args.model_cache)
            print(f"{label}: model {key}, {args.swaps} swaps", file=sys.stderr, flush=True)
            results.append(perswap.run_model(spec, work, opts, label))
            header = [
                f"# Per-swap benchmark `{label}`, {time.strftime('%Y-%m-%d %H:%M:%S')}",
                "",
                f"Server from `{source}` (commit `{_describe(source)}`), pinned to core "
                f"{SERVER_CPU}; wrk -t{args.connections} -c{args.connections} (closed loop, "
                f"keep-alive, per-request log; think time {args.think_ms} ms) pinned to core "
                f"{LOAD_CPU}; batching "
                f"{'on' if args.batching else 'off'}; TF threads {args.tf_threads}; extra flags "
                f"{' '.join(args.server_flag) or 'none'}. Windows: see bench_swap/perswap.py. "
                f"Load average at the end: {os.getloadavg()[0]:.2f}.",
            ]
            md, raw = perswap.write(results, header, out)  # after each model: partial results
            if args.keep_logs:
                for kept in [*work.glob("kept-server-*.log"), *work.glob("kept-requests-*")]:
                    shutil.copy(kept, out.with_name(f"{out.name}-{kept.name[5:]}"))
    print(md.read_text())
    print(f"written to {md} and {raw}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CPU})  # keep this script's own work off the server's core
    if args.swaps is not None:
        return per_swap(args)
    with bench_lock(), tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        work = Path(tmp)
        write_body(work / "body.json")
        started = time.monotonic()
        main_phase = polled = None
        if not args.memory_only:
            main_phase = run_phase(args, work, events=True, cycles=args.cycles)
            if args.polled_cycles > 0:
                polled = run_phase(args, work, events=False, cycles=args.polled_cycles)
        runs = run_memory(args, work)
        ctx = context(args)
        if args.server_env:
            ctx.notes.append("server environment: " + " ".join(map("=".join, args.server_env)))
        ctx.notes.append(f"total run time {time.monotonic() - started:.0f} s")
        text = render(ctx, main_phase, polled, runs)
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"swap-{time.strftime('%Y%m%d-%H%M%S')}.md"
        if args.keep_logs:
            for log in work.glob("server-*.log"):
                shutil.copy(log, out.with_name(f"{out.stem}-{log.name}"))
            if main_phase is not None:
                report.dump(out.with_name(f"{out.stem}-events.npz"), main_phase)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
