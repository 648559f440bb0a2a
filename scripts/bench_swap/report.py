"""The swap benchmark's numbers and their markdown report (targets from issue 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench_swap.load import Requests, WrkSummary
from bench_swap.server import VersionTimes

SWAP_P99_RATIO = 1.5  # swap-window p99 <= 1.5 x steady p99
EVENTS_SLACK_S = 0.2  # publish-to-serving <= load time + 0.2 s (+ the poll interval w/o events)
RSS_GROWTH = 0.10  # RSS after every swap within 10% of one version loaded (and of after swap 1)
WINDOW_TAIL_S = 0.5  # a swap window ends this long after the old version is END


@dataclass
class Cycle:
    """One swap: publish version `version`, wait until it is AVAILABLE and its predecessor END.
    Times are monotonic seconds; `times` is what the server logged about `version`."""

    version: int
    publish_started: float
    published: float  # publish() returned: the version directory is in place
    available_seen: float
    old_end_seen: float
    memory_kib: dict[str, int] = field(default_factory=dict)  # after the swap window
    times: VersionTimes = field(default_factory=VersionTimes)
    old_times: VersionTimes = field(default_factory=VersionTimes)  # of version - 1

    @property
    def window(self) -> tuple[float, float]:
        return (self.publish_started, self.old_end_seen + WINDOW_TAIL_S)

    @property
    def to_serving_s(self) -> float:
        return self.available_seen - self.published

    @property
    def excess_s(self) -> float | None:
        """Publish-to-serving minus the server's own load+warmup time."""
        if self.times.ready_s is None:
            return None
        return self.to_serving_s - self.times.ready_s


@dataclass
class Phase:
    """One server run under load: its cycles, the request log and wrk's summary."""

    events: bool
    poll_seconds: int
    cycles: list[Cycle]
    requests: Requests
    wrk: WrkSummary
    steady: tuple[float, float] | None = None  # the steady window, if this phase had one
    polls: int = 0
    one_version_kib: dict[str, int] = field(default_factory=dict)  # before the first publish


@dataclass
class Context:
    date: str
    commit: str
    cpu: str
    connections: int
    tf_threads: int
    plain_rate: float | None  # wrk -t1 without Lua hooks, req/s
    notes: list[str] = field(default_factory=list)


def dump(path: Path, phase: Phase) -> None:
    """The phase's request log and swap times as .npz (`--keep-logs`), for digging in later."""
    cycles = np.array(
        [
            (
                c.version,
                c.publish_started,
                c.published,
                c.available_seen,
                c.old_end_seen,
                c.times.loading_at or np.nan,
                c.times.available_at or np.nan,
                c.old_times.end_at or np.nan,
                c.memory_kib.get("VmRSS", 0),
            )
            for c in phase.cycles
        ]
    )
    r = phase.requests
    np.savez_compressed(path, sent=r.sent, latency=r.latency, status=r.status, cycles=cycles)


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def failures(phase: Phase) -> int:
    """Non-200 answers and lost requests in the log, or wrk's socket errors if more."""
    wrk_errors = sum(phase.wrk.errors[k] for k in ("connect", "read", "write", "timeout"))
    return max(phase.requests.failures, wrk_errors + phase.wrk.errors["status"])


def _excess(phase: Phase) -> list[float]:
    return [e for c in phase.cycles if (e := c.excess_s) is not None]


def targets_table(main: Phase, polled: Phase | None) -> list[str]:
    assert main.steady is not None
    steady = main.requests.between(*main.steady).ok_latency
    swap = main.requests.within([c.window for c in main.cycles]).ok_latency
    s50, s99, w50, w99 = pct(steady, 50), pct(steady, 99), pct(swap, 50), pct(swap, 99)
    ratio = w99 / s99
    fails = failures(main) + (failures(polled) if polled else 0)
    total = len(main.requests.sent) + (len(polled.requests.sent) if polled else 0)
    rows = [
        "| measure | value | target | result |",
        "|---|---|---|---|",
        f"| steady p50 / p99 ({len(steady)} requests) | {ms(s50)} / {ms(s99)} | | |",
        f"| swap-window p50 / p99 ({len(swap)} requests, {len(main.cycles)} swaps) "
        f"| {ms(w50)} / {ms(w99)} | p99 <= {SWAP_P99_RATIO}x steady p99 "
        f"| {ratio:.2f}x {verdict(ratio <= SWAP_P99_RATIO)} |",
        f"| failed requests | {fails} of {total} | 0 | {verdict(fails == 0)} |",
    ]
    rows.append(_serving_row(main, EVENTS_SLACK_S, "with file events"))
    if polled is not None:
        bound = EVENTS_SLACK_S + polled.poll_seconds
        rows.append(_serving_row(polled, bound, f"no file events, poll {polled.poll_seconds} s"))
    if main.one_version_kib:
        rows.append(_one_version_row(main.one_version_kib, main.cycles))
    rows.append(_memory_row(main.cycles))
    return rows


def _serving_row(phase: Phase, bound: float, label: str) -> str:
    excess = _excess(phase)
    worst = max(excess, default=float("nan"))
    ready = [c.times.ready_s for c in phase.cycles if c.times.ready_s is not None]
    return (
        f"| publish -> serving, {label}: excess over load+warmup, median / max "
        f"({len(excess)} swaps; load+warmup median {pct(ready, 50):.2f} s) "
        f"| {pct(excess, 50):.3f} s / {worst:.3f} s | <= {bound:.1f} s "
        f"| {verdict(bool(excess) and worst <= bound)} |"
    )


def _one_version_row(one: dict[str, int], cycles: list[Cycle]) -> str:
    """The memory target measured from the right baseline: one version loaded, before any
    publish (a swap that keeps the old version resident shows from swap 1 on)."""
    base = one["VmRSS"]
    worst = max(c.memory_kib["VmRSS"] for c in cycles)
    growth = worst / base - 1
    return (
        f"| RSS one version loaded (before any publish) / worst after a swap | "
        f"{base / 1024:.1f} MiB / {worst / 1024:.1f} MiB | within {RSS_GROWTH:.0%} | "
        f"{growth:+.1%} {verdict(growth <= RSS_GROWTH)} |"
    )


def _memory_row(cycles: list[Cycle]) -> str:
    first, last = cycles[0].memory_kib["VmRSS"], cycles[-1].memory_kib["VmRSS"]
    growth = last / first - 1
    return (
        f"| RSS after swap 1 / after swap {len(cycles)} | {first / 1024:.1f} MiB / "
        f"{last / 1024:.1f} MiB | within {RSS_GROWTH:.0%} | {growth:+.1%} "
        f"{verdict(abs(growth) <= RSS_GROWTH)} |"
    )


def _stat_row(name: str, values: Sequence[float]) -> str:
    if not values:
        return f"| {name} | n/a | n/a | n/a |"
    return f"| {name} | {pct(values, 50):.3f} | {pct(values, 90):.3f} | {max(values):.3f} |"


def _detect(c: Cycle) -> float | None:
    at = c.times.loading_at
    return None if at is None else at - c.published


def _visible(c: Cycle) -> float | None:
    at = c.times.available_at
    return None if at is None else c.available_seen - at


_TIMINGS: tuple[tuple[str, Callable[[Cycle], float | None]], ...] = (
    ("publish() (copy + fsync + rename)", lambda c: c.published - c.publish_started),
    ("published -> LOADING logged (detection)", _detect),
    ("SavedModel load (logged)", lambda c: c.times.load_s),
    ("warmup (logged)", lambda c: c.times.warmup_s),
    ("load+warmup (logged)", lambda c: c.times.ready_s),
    ("AVAILABLE logged -> seen on status route", _visible),
    ("published -> AVAILABLE seen", lambda c: c.to_serving_s),
    ("AVAILABLE seen -> old version END seen", lambda c: c.old_end_seen - c.available_seen),
    ("old version drain+unload (logged)", lambda c: c.old_times.unload_s),
)


def timing_table(phase: Phase) -> list[str]:
    """Where a swap's time goes, from the benchmark's clocks and the server's log."""
    rows = ["| seconds | median | p90 | max |", "|---|---|---|---|"]
    for name, get in _TIMINGS:
        values = [v for c in phase.cycles if (v := get(c)) is not None]
        rows.append(_stat_row(name, values))
    return rows


_STAGES: tuple[tuple[str, Callable[[Cycle], tuple[float | None, float | None]]], ...] = (
    (
        "publish() -> LOADING (copy, detection, scan)",
        lambda c: (c.publish_started, c.times.loading_at),
    ),
    ("LOADING -> AVAILABLE (load + warmup)", lambda c: (c.times.loading_at, c.times.available_at)),
    (
        "AVAILABLE -> old END (drain, unload, release)",
        lambda c: (c.times.available_at, c.old_times.end_at),
    ),
    (
        f"old END -> +{WINDOW_TAIL_S} s (held-up answers land here)",
        lambda c: (c.old_times.end_at, c.window[1]),
    ),
)


def stage_table(phase: Phase) -> list[str]:
    """Latency of requests by the swap stage they were answered in (server-logged stage
    boundaries), to tell which step of a swap slows requests down."""
    answered = phase.requests.sent + phase.requests.latency
    ok = phase.requests.status == 200
    rows = ["| answered during | requests | p50 | p99 | max |", "|---|---|---|---|---|"]
    for name, bounds in _STAGES:
        keep = np.zeros(len(answered), dtype=bool)
        for c in phase.cycles:
            start, end = bounds(c)
            if start is not None and end is not None:
                keep |= (answered >= start) & (answered < end)
        lat = phase.requests.latency[keep & ok]
        top = ms(float(lat.max())) if lat.size else "n/a"
        rows.append(f"| {name} | {lat.size} | {ms(pct(lat, 50))} | {ms(pct(lat, 99))} | {top} |")
    return rows


def load_table(main: Phase, ctx: Context) -> list[str]:
    assert main.steady is not None
    steady = main.requests.between(*main.steady)
    rate = len(steady.sent) / (main.steady[1] - main.steady[0])
    cpu = main.wrk.cpu_seconds / main.wrk.seconds
    plain = f"{ctx.plain_rate:.0f} req/s" if ctx.plain_rate else "not measured"
    first = main.cycles[0].publish_started
    between = main.requests.between(first, main.cycles[-1].window[1])
    outside = _outside(between, [c.window for c in main.cycles]).ok_latency
    swap = main.requests.within([c.window for c in main.cycles]).ok_latency
    return [
        "| load | value |",
        "|---|---|",
        f"| recording wrk (-t{ctx.connections} -c{ctx.connections}, Lua log), steady rate "
        f"| {rate:.0f} req/s |",
        f"| plain wrk -t1 -c{ctx.connections} (no Lua), same server | {plain} |",
        f"| wrk CPU use over the run (core 1) | {cpu:.0%} of a core |",
        f"| between swap windows p50 / p99 ({len(outside)} requests; swap-window p99 / this "
        f"= {pct(swap, 99) / pct(outside, 99):.2f}x) | {ms(pct(outside, 50))} / "
        f"{ms(pct(outside, 99))} |",
        f"| max latency: steady / swap windows "
        f"| {ms(float(np.max(steady.ok_latency)))} / "
        f"{ms(float(np.max(swap)))} |",
    ]


def _outside(reqs: Requests, windows: list[tuple[float, float]]) -> Requests:
    keep = np.ones(len(reqs.sent), dtype=bool)
    for start, end in windows:
        keep &= ~((reqs.sent >= start) & (reqs.sent < end))
    return Requests(reqs.sent[keep], reqs.latency[keep], reqs.status[keep], reqs.digest[keep])


def memory_table(cycles: list[Cycle], one_version: dict[str, int] | None = None) -> list[str]:
    """Memory after selected swaps, with the one-version read (before any publish) first."""
    picks = sorted({0, 1, 4, 9, 19, 29, 39, len(cycles) - 1} & set(range(len(cycles))))
    reads = [c.memory_kib for c in (cycles[i] for i in picks)]
    names = [str(i + 1) for i in picks]
    if one_version:
        reads, names = [one_version, *reads], ["none (one version)", *names]
    rows = ["| after swap | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ("VmRSS", "RssAnon", "VmHWM"):
        vals = " | ".join(f"{m.get(key, 0) / 1024:.1f}" for m in reads)
        rows.append(f"| {key} MiB | {vals} |")
    rows.append("| threads | " + " | ".join(str(m.get("Threads", "")) for m in reads) + " |")
    return rows


def render(ctx: Context, main: Phase, polled: Phase | None) -> str:
    parts = [
        f"# Hot-swap benchmark, {ctx.date}",
        "",
        f"Commit `{ctx.commit}`; {ctx.cpu}. Server `python -m app` pinned to core 0 "
        f"(TF intra/inter-op threads {ctx.tf_threads or 'auto'}), the demo MLP; wrk and this "
        f"script pinned to core 1, {ctx.connections} keep-alive connections, one 784-float "
        "instance per request. Swap window: from publish() to the old version END + "
        f"{WINDOW_TAIL_S} s. Status route polled every 10 ms for the whole run.",
        "",
        *targets_table(main, polled),
        "",
        "## Where a swap's time goes (file events)",
        "",
        *timing_table(main),
        "",
        "## Request latency by swap stage (file events)",
        "",
        *stage_table(main),
    ]
    if polled is not None:
        parts += ["", f"## Without file events (poll {polled.poll_seconds} s)", ""]
        parts += timing_table(polled)
    parts += ["", "## Load generator", "", *load_table(main, ctx)]
    parts += ["", "## Memory", "", *memory_table(main.cycles, main.one_version_kib)]
    if ctx.notes:
        parts += ["", "## Notes", "", *(f"- {n}" for n in ctx.notes)]
    return "\n".join(parts) + "\n"
