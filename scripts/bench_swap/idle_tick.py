"""How long a CPU-bound SCHED_IDLE thread holds a core that a normal thread keeps busy, with and
without the idle-step ticker (app/core/ticker.py).

    .venv/bin/python scripts/bench_swap/idle_tick.py [--cpu 0] [--seconds 6] [--ticks 0,4000]

Per tick (the kernel tick the ticker assumes, microseconds; 0 = no ticker) and nice value of
the ticker (`--nice`, default 0), three processes on one CPU: a normal one that spins and
records every gap over 0.5 ms between two of its iterations (the time the kernel gave someone
else), a SCHED_IDLE one that spins (as a load's graph import or callable does), and the
ticker itself (hotserve's, `Ticker.ticking` for the whole run). Prints the normal process's
iterations per second and gaps (count, longest), and the CPU time the SCHED_IDLE one got; then
the same without the SCHED_IDLE process: what ticking alone costs the normal one. No hotserve
server runs; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _wait(start: float) -> None:
    while time.time() < start:
        time.sleep(0.001)


def _busy(start: float, seconds: float) -> None:
    _wait(start)
    last = time.perf_counter()
    end = last + seconds
    gaps: list[float] = []
    loops = 0
    while last < end:
        loops += 1
        now = time.perf_counter()
        if now - last > 0.0005:
            gaps.append(now - last)
        last = now
    gaps.sort()
    longest = gaps[-1] * 1e3 if gaps else 0.0
    top = ", ".join(f"{g * 1e3:.2f}" for g in gaps[-5:])
    print(
        f"  normal: {loops / seconds / 1e6:.3f} M iterations/s, {len(gaps)} gaps over 0.5 ms,"
        f" longest {longest:.2f} ms (top: {top})"
    )


def _idle(start: float, seconds: float) -> None:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    _wait(start)
    began = time.thread_time()
    end = time.perf_counter() + seconds - 0.05  # stops before the normal one does
    while time.perf_counter() < end:
        pass
    print(f"  SCHED_IDLE: {(time.thread_time() - began) * 1e3:.1f} ms of CPU in {seconds:.0f} s")


def _run(cpu: int, seconds: float, tick_us: int, with_idle: bool, nice: int) -> None:
    sys.path.insert(0, str(REPO))
    from app.core.ticker import Ticker

    os.sched_setaffinity(0, {cpu})  # children and the ticker inherit it
    ticker = Ticker()
    if tick_us:
        ticker.start(tick_us / 1e6, nice)
    start = time.time() + 0.5
    me = [sys.executable, __file__]
    procs = [
        subprocess.Popen([*me, "--role", role, "--start", repr(start), "--seconds", str(seconds)])
        for role in ("busy", "idle")[: 2 if with_idle else 1]
    ]
    print(
        (f"tick {tick_us} us, nice {nice}" if tick_us else "no ticker")
        + ("" if with_idle else ", no SCHED_IDLE process (the ticker's own cost)")
    )
    try:
        with ticker.ticking():
            for proc in procs:
                proc.wait()
    finally:
        ticker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--ticks", default="0,4000", help="microseconds, comma-separated")
    parser.add_argument("--nice", default="0", help="the ticker's nice values, comma-separated")
    parser.add_argument("--role", choices=("busy", "idle"), help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "busy":
        _busy(args.start, args.seconds)
    elif args.role == "idle":
        _idle(args.start, args.seconds)
    else:
        for with_idle in (True, False):
            for tick in args.ticks.split(","):
                for nice in args.nice.split(",") if int(tick) else ("0",):
                    _run(args.cpu, args.seconds, int(tick), with_idle, int(nice))


if __name__ == "__main__":
    main()
