"""Per-swap measurement (issue 12): what every single swap does to the requests around it.

One server per model, under steady wrk load (16 closed-loop keep-alive connections, every
request's send time, latency, status and answer digest logged by lua/record.lua). Versions
alternate between two variants of the model that answer differently (the MLP with two weight
seeds; the generated 64 MiB / 1 GiB models with fill 1 and 2), so every answer tells which
version gave it.

Each swap k (version k replaces k - 1):

1. the variant is copied into a hidden staging folder beside the versions (ignored by the
   scanner) and fsynced, so the copy's disk traffic is over before anything is measured;
2. a quiet gap of G s (the steady period: one version, nothing happening);
3. `published`: the staging folder is renamed to `k` (the atomic publish);
4. wait until the status route (polled every 10 ms, the whole run) shows k AVAILABLE and k - 1
   END, then `WINDOW_TAIL_S` more; RSS is read, the old version's folder is deleted.

Definitions (all on CLOCK_MONOTONIC; the server's log lines are mapped onto it):

- swap window: [published, old version END seen on the status route + WINDOW_TAIL_S). It holds
  detection, load, warmup, the route switch, the old version's drain, unload and memory release,
  and the first half second after it (late effects: GC, freed memory).
- steady window: the L s just before `published`, L = the swap window's length (equally long,
  so the longest gap is compared over the same span); the quiet gap G is chosen ahead as
  max(--min-steady, GAP_FACTOR x the longest swap window so far) so it normally holds L. The
  first swap (version 2) is a calibration, not measured: its window gives the first G, as load
  times differ by 100x between a paced and an unpaced load. If a swap window is longer than its
  gap, the steady window is the whole gap and the swap is flagged `short`.
- longest no-completion span of a window: the longest interval inside [start, end) without a
  200 answer arriving (window edges count as boundaries).
- p50 / p99: latency of the requests SENT in the window (200s only; failures counted apart).
- slower than steady p99: the share of the swap window's requests (200s) slower than the
  steady window's p99 (1% of the steady window's own, by definition).
- publish -> first new answer: `published` to the first answer carrying the new variant's digest.
- first new vs last old: latency of the first FIRST_N answers of the new version against the last
  FIRST_N of the old one (both inside the swap window).
- RSS: VmRSS after the window against VmRSS with one version loaded, read after the warm-up
  traffic and before the first publish.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench_swap import models
from bench_swap.load import Requests, WrkLoad
from bench_swap.server import Server, ServerOptions, StatusPoller, VersionTimes, parse_log

WINDOW_TAIL_S = 0.5
FIRST_N = 100
WARMUP_S = 3.0
STATE_TIMEOUT_S = 300.0
STAGE_PREFIX = ".hotserve-tmp-bench-"  # app.publish.TMP_PREFIX: the scanner ignores it
FIRST_GAP_GUESS_S = {"mlp": 2.0, "64": 3.0, "1024": 8.0}  # before the calibration swap
GAP_FACTOR = 1.5  # load times vary by up to ~1.4x from swap to swap under load
MLP_BODY_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """A model the benchmark can swap: its name on the server, two variants, a request body."""

    key: str  # "mlp", or the size in MiB of a generated model
    name: str
    variants: tuple[Path, Path]
    body: str


def mlp_body() -> str:
    import random

    rng = random.Random(MLP_BODY_SEED)
    row = ",".join(f"{rng.random():.4f}" for _ in range(784))
    return f'{{"instances": [[{row}]]}}'


def prepare(key: str, cache: Path) -> ModelSpec:
    """Build (once; kept in `cache` across runs) the two variants of model `key`."""
    cache.mkdir(parents=True, exist_ok=True)
    if key == "mlp":
        paths = []
        for seed in (42, 4242):
            out = cache / f"mlp-seed{seed}"
            if not (out / "saved_model.pb").exists():
                shutil.rmtree(out, ignore_errors=True)
                models.build_mlp_variant(out, seed)
            paths.append(out)
        return ModelSpec("mlp", "mlp", (paths[0], paths[1]), mlp_body())
    mib = int(key)
    paths = []
    for fill in (1.0, 2.0):
        out = cache / f"big-{mib}mib-fill{fill:g}"
        if not (out / "saved_model.pb").exists():
            shutil.rmtree(out, ignore_errors=True)
            models.build(out, mib, fill)
        paths.append(out)
    return ModelSpec(key, "big", (paths[0], paths[1]), '{"instances": [1.0, 2.0, 3.0]}')


@dataclass
class Swap:
    """One swap's clock readings (monotonic s) and what the server logged."""

    version: int
    quiet_from: float  # staging done: the steady period starts
    published: float
    available_seen: float
    old_end_seen: float
    rss_kib: int = 0
    times: VersionTimes = field(default_factory=VersionTimes)
    old_times: VersionTimes = field(default_factory=VersionTimes)

    @property
    def window(self) -> tuple[float, float]:
        return (self.published, self.old_end_seen + WINDOW_TAIL_S)

    @property
    def steady(self) -> tuple[float, float]:
        length = self.window[1] - self.window[0]
        return (max(self.published - length, self.quiet_from), self.published)


@dataclass(frozen=True)
class RunOptions:
    swaps: int
    connections: int
    server_cpu: int
    load_cpu: int
    tf_threads: int
    batching: bool
    min_steady: float
    source: Path
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    think_ms: int = 0  # wrk's wait between an answer and the next request (0: saturating)
    keep_logs: bool = False  # leave the server log and the request log in `work` (kept-*)


def _stage(src: Path, base: Path, version: int) -> Path:
    from app.publish import _finish_tree

    tmp = base / f"{STAGE_PREFIX}{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    _finish_tree(tmp)
    return tmp


def _publish(tmp: Path, base: Path, version: int) -> float:
    os.rename(tmp, base / str(version))
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic()


def _batching_file(work: Path) -> Path:
    """bench.py's batching configuration: max 64 rows, no timeout, one batch thread."""
    path = work / "batching.pbtxt"
    path.write_text(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 0 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 1000000 }\n"
    )
    return path


def run_model(spec: ModelSpec, work: Path, opts: RunOptions, label: str) -> dict[str, Any]:
    """Serve `spec` and swap it `opts.swaps` times under load; the raw result (JSON-able)."""
    base = work / f"base-{label}-{spec.key}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    _publish(_stage(spec.variants[0], base, 1), base, 1)
    body = work / f"body-{spec.key}.json"
    body.write_text(spec.body)
    flags = list(opts.flags)
    if opts.batching:
        flags += ["--enable_batching", f"--batching_parameters_file={_batching_file(work)}"]
    log_path = work / f"server-{label}-{spec.key}.log"
    options = ServerOptions(
        base,
        log_path,
        opts.server_cpu,
        tf_threads=opts.tf_threads,
        model=spec.name,
        flags=tuple(flags),
        env=opts.env,
        source=opts.source,
    )
    server = Server(options)
    load: WrkLoad | None = None
    poller: StatusPoller | None = None
    swaps: list[Swap] = []
    try:
        server.wait_state(1, "AVAILABLE", STATE_TIMEOUT_S, every=0.2)
        poller = StatusPoller(server.url, model=spec.name)
        url = f"{server.url}/v1/models/{spec.name}:predict"
        load = WrkLoad(url, body, work, opts.connections, opts.load_cpu, opts.think_ms)
        wall_minus_mono = time.time() - time.monotonic()
        time.sleep(WARMUP_S)
        one_version = server.memory_kib()["VmRSS"]
        gap = max(opts.min_steady, FIRST_GAP_GUESS_S.get(spec.key, 3.0))
        for version in range(2, opts.swaps + 3):
            tmp = _stage(spec.variants[(version - 1) % 2], base, version)
            quiet_from = time.monotonic()
            time.sleep(gap)
            published = _publish(tmp, base, version)
            available = poller.wait_for(version, "AVAILABLE", STATE_TIMEOUT_S)
            old_end = poller.wait_for(version - 1, "END", STATE_TIMEOUT_S)
            swap = Swap(version, quiet_from, published, available, old_end)
            time.sleep(max(swap.window[1] - time.monotonic(), 0.0))
            swap.rss_kib = server.memory_kib()["VmRSS"]
            shutil.rmtree(base / str(version - 1), ignore_errors=True)  # disk, not memory
            length = swap.window[1] - swap.window[0]
            if version == 2:  # the calibration swap (see the module docstring)
                gap = max(opts.min_steady, GAP_FACTOR * length)
                print(f"  {label} {spec.key} calibration swap: window {length:.2f} s", flush=True)
                continue
            if not load.running():  # a swap without traffic measures nothing: stop here
                raise RuntimeError(f"wrk exited during swap {version - 2}; see {log_path}")
            swaps.append(swap)
            gap = max(gap, opts.min_steady, GAP_FACTOR * length)  # 1.5x the longest so far
            print(
                f"  {label} {spec.key} swap {version - 2}/{opts.swaps}: window {length:.2f} s",
                flush=True,
            )
        load.stop()
    finally:
        if poller is not None:
            poller.stop()
        if load is not None and load.proc.poll() is None:
            load.proc.kill()
            load.proc.wait()
        server.stop()
    times = parse_log(log_path.read_text(errors="replace"), wall_minus_mono, spec.name)
    for s in swaps:
        s.times = times.get(s.version, s.times)
        s.old_times = times.get(s.version - 1, s.old_times)
    assert load is not None
    requests = load.requests()
    if opts.keep_logs:  # for digging in later: copied beside the report
        shutil.copy(log_path, work / f"kept-{log_path.name}")
        np.savez_compressed(
            work / f"kept-requests-{label}-{spec.key}.npz",
            sent=requests.sent,
            latency=requests.latency,
            status=requests.status,
            digest=requests.digest,
            wall_minus_mono=wall_minus_mono,
            swaps=np.array([(s.version, s.quiet_from, s.published, s.old_end_seen) for s in swaps]),
        )
    return analyse(spec, label, requests, swaps, one_version, opts)


# ---- analysis ---------------------------------------------------------------------------


def longest_gap(answered: np.ndarray, start: float, end: float) -> tuple[float, float]:
    """(length, start) of the longest span in [start, end) with no answer arriving."""
    inside = np.sort(answered[(answered >= start) & (answered < end)])
    edges = np.concatenate(([start], inside, [end]))
    gaps = np.diff(edges)
    i = int(np.argmax(gaps))
    return float(gaps[i]), float(edges[i])


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def _mode(values: np.ndarray) -> int | None:
    if not values.size:
        return None
    uniq, counts = np.unique(values, return_counts=True)
    return int(uniq[int(np.argmax(counts))])


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 3)


def _rel(at: float | None, ref: float) -> float | None:
    return None if at is None else round((at - ref) * 1e3, 1)


def swap_record(r: Requests, s: Swap, one_version_kib: int) -> dict[str, Any]:
    ok = r.status == 200
    answered = r.answered
    done_ok = answered[ok]
    w0, w1 = s.window
    s0, s1 = s.steady
    in_swap = r.between(w0, w1)
    in_steady = r.between(s0, s1)
    swap_gap, swap_gap_at = longest_gap(done_ok, w0, w1)
    steady_gap, _ = longest_gap(done_ok, s0, s1)
    sw_lat = in_swap.ok_latency
    st_lat = in_steady.ok_latency
    # Which answers came from which version: the digest of the answers the old version gave in
    # the steady window, and of those after the old version's END (only the new one serves).
    old_digest = _mode(in_steady.digest[in_steady.status == 200])
    after = ok & (answered >= s.old_end_seen) & (answered < w1)
    new_digest = _mode(r.digest[after])
    first_new = last_old = None
    first_new_lat = last_old_lat = np.empty(0)
    if new_digest is not None and new_digest != old_digest:
        order = np.argsort(answered)
        is_new = ok & (r.digest == new_digest) & (answered >= w0)
        new_idx = order[is_new[order]]
        if new_idx.size:
            first_new = float(answered[new_idx[0]])
            first_new_lat = r.latency[new_idx[:FIRST_N]]
        is_old = ok & (r.digest == old_digest) & (answered >= w0) & (answered < w1)
        old_idx = order[is_old[order]]
        last_old_lat = r.latency[old_idx[-FIRST_N:]]
        if old_idx.size:
            last_old = float(answered[old_idx[-1]])
    p99_swap, p99_steady = _pct(sw_lat, 99), _pct(st_lat, 99)
    # How many, where the p99 ratio says how far: 1% of the steady window is slower than its
    # p99 by definition, and its slowest 1% sits just above the batches the server stalls on
    # its own, so a few more stalled batches lift p99 into their latency.
    over = float(np.mean(sw_lat > p99_steady)) if p99_steady and sw_lat.size else None
    t, o = s.times, s.old_times
    # p99 of the answers that arrived in each stage of the swap (server-logged boundaries).
    stages = {}
    bounds = [w0, t.loading_at, t.available_at, o.end_at, w1]
    names = ("detect", "load", "switch_unload", "tail")
    for name, a, b in zip(names, bounds[:-1], bounds[1:], strict=True):
        if a is None or b is None:
            continue
        lat = r.latency[ok & (answered >= a) & (answered < b)]
        stages[f"p99_{name}_ms"] = _ms(_pct(lat, 99))
        stages[f"n_{name}"] = int(lat.size)
    return {
        "version": s.version,
        "window_s": round(w1 - w0, 3),
        "steady_s": round(s1 - s0, 3),
        "steady_short": (s1 - s0) < (w1 - w0) - 1e-3,
        "requests_swap": int(in_swap.sent.size),
        "requests_steady": int(in_steady.sent.size),
        "failures_swap": in_swap.failures,
        "failures_steady": in_steady.failures,
        "gap_swap_ms": _ms(swap_gap),
        "gap_steady_ms": _ms(steady_gap),
        "gap_swap_at_ms": _rel(swap_gap_at, w0),
        "gap_swap_vs_available_ms": _rel(swap_gap_at, t.available_at) if t.available_at else None,
        "gap_swap_vs_old_end_ms": _rel(swap_gap_at, o.end_at) if o.end_at else None,
        "p50_swap_ms": _ms(_pct(sw_lat, 50)),
        "p99_swap_ms": _ms(p99_swap),
        "max_swap_ms": _ms(float(sw_lat.max()) if sw_lat.size else None),
        "p50_steady_ms": _ms(_pct(st_lat, 50)),
        "p99_steady_ms": _ms(p99_steady),
        "max_steady_ms": _ms(float(st_lat.max()) if st_lat.size else None),
        "p99_ratio": round(p99_swap / p99_steady, 3) if p99_swap and p99_steady else None,
        "over_steady_p99": None if over is None else round(over, 5),
        "publish_to_first_new_s": None if first_new is None else round(first_new - w0, 4),
        "publish_to_available_seen_s": round(s.available_seen - w0, 4),
        "publish_to_old_end_seen_s": round(s.old_end_seen - w0, 4),
        "last_old_answer_after_first_new_ms": (
            None if first_new is None or last_old is None else _ms(last_old - first_new)
        ),
        "first_new_p50_ms": _ms(_pct(first_new_lat, 50)),
        "first_new_max_ms": _ms(float(first_new_lat.max()) if first_new_lat.size else None),
        "last_old_p50_ms": _ms(_pct(last_old_lat, 50)),
        "last_old_max_ms": _ms(float(last_old_lat.max()) if last_old_lat.size else None),
        "load_s": t.load_s,
        "warmup_s": t.warmup_s,
        "load_warmup_s": t.ready_s,
        "old_drain_unload_s": o.unload_s,
        "loading_logged_ms": _rel(t.loading_at, w0),
        "available_logged_ms": _rel(t.available_at, w0),
        "old_unloading_logged_ms": _rel(o.unloading_at, w0),
        "old_end_logged_ms": _rel(o.end_at, w0),
        **stages,
        "rss_mib": round(s.rss_kib / 1024, 1),
        "rss_vs_one_version": round(s.rss_kib / one_version_kib - 1, 4),
    }


def analyse(
    spec: ModelSpec,
    label: str,
    r: Requests,
    swaps: list[Swap],
    one_version_kib: int,
    opts: RunOptions,
) -> dict[str, Any]:
    records = [swap_record(r, s, one_version_kib) for s in swaps]
    swap_lat = r.within([s.window for s in swaps]).ok_latency
    steady_lat = r.within([s.steady for s in swaps]).ok_latency
    return {
        "label": label,
        "model": spec.key,
        "source": str(opts.source),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "one_version_rss_mib": round(one_version_kib / 1024, 1),
        "requests": int(r.sent.size),
        "failures_total": r.failures,
        "pooled_p50_swap_ms": _ms(_pct(swap_lat, 50)),
        "pooled_p99_swap_ms": _ms(_pct(swap_lat, 99)),
        "pooled_p50_steady_ms": _ms(_pct(steady_lat, 50)),
        "pooled_p99_steady_ms": _ms(_pct(steady_lat, 99)),
        "swaps": records,
        "loadavg": os.getloadavg(),
    }


# ---- report ------------------------------------------------------------------------------


def _col(result: dict[str, Any], key: str) -> list[float]:
    return [x[key] for x in result["swaps"] if x.get(key) is not None]


def _med_max(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "n/a"
    return f"{fmt.format(float(np.median(values)))} / {fmt.format(max(values))}"


def summary_rows(results: list[dict[str, Any]]) -> list[str]:
    """One row per (label, model): the issue's targets over all swaps."""
    head = (
        "| run | model | swaps | failures (all requests) | longest no-answer span, swap "
        "windows: median / max ms | same, equally long steady windows: median / max ms "
        "| swaps with swap span <= its steady span | p99 swap / steady per swap: median / max "
        "| pooled p99 swap vs steady (ms) | swap requests slower than steady p99: median / "
        "max | publish -> first new answer: median / max s "
        "| first 100 new answers p50 vs last 100 old p50 (median ms) | RSS after swap vs one "
        "version: worst |"
    )
    rows = [head, "|" + "---|" * 13]
    for res in results:
        recs = res["swaps"]
        sw, st = _col(res, "gap_swap_ms"), _col(res, "gap_steady_ms")
        within = sum(1 for x in recs if x["gap_swap_ms"] <= x["gap_steady_ms"])
        ratio = _col(res, "p99_ratio")
        pooled = (
            f"{res['pooled_p99_swap_ms']:.1f} vs {res['pooled_p99_steady_ms']:.1f} "
            f"({res['pooled_p99_swap_ms'] / res['pooled_p99_steady_ms']:.2f}x)"
        )
        fn, lo = _col(res, "first_new_p50_ms"), _col(res, "last_old_p50_ms")
        first = f"{np.median(fn):.1f} vs {np.median(lo):.1f}" if fn and lo else "n/a"
        rss = max(_col(res, "rss_vs_one_version"), default=float("nan"))
        fails = sum(x["failures_swap"] for x in recs)
        rows.append(
            f"| {res['label']} | {res['model']} | {len(recs)} | {fails} in swap windows "
            f"({res['failures_total']} of {res['requests']}) | {_med_max(sw)} | {_med_max(st)} "
            f"| {within}/{len(recs)} | {_med_max(ratio, '{:.2f}')}x | {pooled} "
            f"| {_med_max(_col(res, 'over_steady_p99'), '{:.2%}')} "
            f"| {_med_max(_col(res, 'publish_to_first_new_s'), '{:.2f}')} | {first} "
            f"| {rss:+.1%} |"
        )
    return rows


_SWAP_COLUMNS = (
    ("v", "version", "{}"),
    ("window s", "window_s", "{:.2f}"),
    ("gap swap ms", "gap_swap_ms", "{:.1f}"),
    ("gap steady ms", "gap_steady_ms", "{:.1f}"),
    ("gap at (ms after publish / vs AVAILABLE / vs old END)", None, ""),
    ("p50 swap/steady ms", None, ""),
    ("p99 swap/steady ms", None, ""),
    ("p99 ratio", "p99_ratio", "{:.2f}"),
    ("swap requests slower than steady p99", "over_steady_p99", "{:.2%}"),
    ("publish -> first new s", "publish_to_first_new_s", "{:.3f}"),
    ("load+warmup s", "load_warmup_s", "{:.2f}"),
    ("first new p50/max ms", None, ""),
    ("last old p50/max ms", None, ""),
    ("p99 by stage: detect / load / switch+unload / tail ms", None, ""),
    ("fail", "failures_swap", "{}"),
    ("RSS vs one", "rss_vs_one_version", "{:+.1%}"),
)


def _fmt(fmt: str, value: Any) -> str:
    return "n/a" if value is None else fmt.format(value)


def _pair(x: dict[str, Any], a: str, b: str) -> str:
    return f"{_fmt('{:.1f}', x.get(a))} / {_fmt('{:.1f}', x.get(b))}"


def swap_rows(res: dict[str, Any]) -> list[str]:
    rows = ["| " + " | ".join(c[0] for c in _SWAP_COLUMNS) + " |"]
    rows.append("|" + "---|" * len(_SWAP_COLUMNS))
    for x in res["swaps"]:
        cells = []
        for title, key, fmt in _SWAP_COLUMNS:
            if key is not None:
                cells.append(_fmt(fmt, x.get(key)))
            elif title.startswith("gap at"):
                cells.append(
                    f"{_fmt('{:.0f}', x['gap_swap_at_ms'])} / "
                    f"{_fmt('{:+.0f}', x['gap_swap_vs_available_ms'])} / "
                    f"{_fmt('{:+.0f}', x['gap_swap_vs_old_end_ms'])}"
                )
            elif title.startswith("p50"):
                cells.append(_pair(x, "p50_swap_ms", "p50_steady_ms"))
            elif title.startswith("p99 by stage"):
                cells.append(
                    " / ".join(
                        _fmt("{:.1f}", x.get(f"p99_{n}_ms"))
                        for n in ("detect", "load", "switch_unload", "tail")
                    )
                )
            elif title.startswith("p99"):
                cells.append(_pair(x, "p99_swap_ms", "p99_steady_ms"))
            elif title.startswith("first new"):
                cells.append(_pair(x, "first_new_p50_ms", "first_new_max_ms"))
            else:
                cells.append(_pair(x, "last_old_p50_ms", "last_old_max_ms"))
        if x["steady_short"]:
            cells[3] += " (short)"
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render(results: list[dict[str, Any]], header: list[str]) -> str:
    parts = [*header, "", "## Summary", "", *summary_rows(results)]
    for res in results:
        parts += [
            "",
            f"## {res['label']}: model {res['model']} (source {res['source']}; one version "
            f"{res['one_version_rss_mib']:.0f} MiB; loadavg at end {res['loadavg'][0]:.2f})",
            "",
            *swap_rows(res),
        ]
    return "\n".join(parts) + "\n"


def write(results: list[dict[str, Any]], header: list[str], out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    md, raw = out.with_suffix(".md"), out.with_suffix(".json")
    md.write_text(render(results, header))
    raw.write_text(json.dumps(results, indent=1))
    return md, raw
