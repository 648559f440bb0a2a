"""Prometheus metrics: TF Serving's names (spec 12) beside hotserve's own `hotserve_*` series.

One `Metrics` per app, with its own `CollectorRegistry` (never the process-global one: tests build
many apps in one process). What feeds it:
- `RequestMetrics.observe` (the routes' `RequestObserver`), once per `/v1` request;
- one `VersionBatchMetrics` (a `BatchObserver`) per batching version, from `batch_observer()`;
- `timed_loader()` and `version_ready()`, from the lifespan's loader and runner factory;
- the registry, read at scrape time for the version states (core needs no metrics imports).

Threading: every hook and the scrape run on the event-loop thread (see the routes and
`app.core.batching_queue`), except `TimedLoader.load`, which only stores a start time. That is
why the per-request series are plain ints and lists behind a custom collector: an update costs a
dict lookup and a bisect (~1 µs per request, all series) where prometheus_client's locked
values cost ~3.5 µs. prometheus_client provides the registry, the families and the exposition.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from app.config import MonitoringConfig
from app.core.registry import Registry
from app.core.servable import Loader, Servable
from app.core.types import BatchPolicy, ServableId, VersionState
from app.errors import NotFound

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TF = ":tensorflow:serving:"
REQUEST_COUNT = TF + "request_count"
# Past this many label sets per series, unknown names fold into model_name="" (TF Serving's
# value for requests without a model): the model name comes from the URL, i.e. from clients.
MAX_REQUEST_SERIES = 1000


def _exponential(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TF's Buckets::Exponential, rounded to 6 significant digits as TF prints them."""
    return tuple(float(f"{scale * growth**i:.6g}") for i in range(count))


REQUEST_LATENCY_US = _exponential(10, 1.8, 33)  # TF Serving's: 10 µs .. ~20 minutes
QUEUING_LATENCY_US = _exponential(100, 1.2, 52)  # TF Serving's: 100 µs .. ~1 second
BATCH_ROWS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
PADDING_ROWS = (0.0, *BATCH_ROWS)
DELAY_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
RUN_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LOAD_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STATES = [s for s in VersionState if s is not VersionState.UNKNOWN]


class Hist:
    """A histogram for one label set; loop thread only, so no lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        family.add_metric(labels, buckets, self.total)


def _hist_family(
    name: str, doc: str, labels: list[str], series: Iterable[tuple[tuple[str, ...], Hist]]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, hist in series:
        hist.add_to(family, list(key))
    return family


class RequestMetrics:
    """The routes' `RequestObserver`: TF Serving's request_count and request_latency."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str, str, str], Hist] = {}

    def observe(
        self, model: str, api: str, code: str, seconds: float, entrypoint: str = "REST"
    ) -> None:
        """Count every request by (model, code); time successful ones by (model, API,
        entrypoint: "REST" or "GRPC", as TF Serving labels them), in µs."""
        key = (model, code)
        if key in self.counts:
            self.counts[key] += 1
        else:
            key = (model if len(self.counts) < MAX_REQUEST_SERIES else "", code)
            self.counts[key] = self.counts.get(key, 0) + 1
        if code != "OK":
            return
        hist = self.latency.get((model, api, entrypoint))
        if hist is None:
            hist = self._new_latency(model, api, entrypoint)
        hist.observe(seconds * 1e6)

    def _new_latency(self, model: str, api: str, entrypoint: str) -> Hist:
        key = (model if len(self.latency) < MAX_REQUEST_SERIES else "", api, entrypoint)
        hist = self.latency.get(key)
        if hist is None:
            hist = self.latency[key] = Hist(REQUEST_LATENCY_US)
        return hist

    def collect(self) -> Iterator[Metric]:
        count = CounterMetricFamily(
            REQUEST_COUNT, "The total number of requests.", labels=["model_name", "status"]
        )
        for (model, code), n in self.counts.items():
            # TF Serving names counter samples without `_total`; see `Metrics.render`.
            count.add_sample(REQUEST_COUNT, {"model_name": model, "status": code}, n)
        yield count
        latency = HistogramMetricFamily(
            TF + "request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            labels=["model_name", "API", "entrypoint"],
        )
        for (model, api, entrypoint), hist in self.latency.items():
            hist.add_to(latency, [model, api, entrypoint])
        yield latency


@dataclass
class BatchTotals:
    """TF Serving's batching_session histograms, shared by every batching version."""

    queuing: dict[tuple[str, ...], Hist] = field(default_factory=dict)  # by thread_pool_name
    input_size: Hist = field(default_factory=lambda: Hist(BATCH_ROWS))
    processed_size: Hist = field(default_factory=lambda: Hist(BATCH_ROWS))
    padding: dict[tuple[str, ...], Hist] = field(default_factory=dict)  # by execution size

    def collect(self) -> Iterator[Metric]:
        prefix = TF + "batching_session:"
        yield _hist_family(
            prefix + "queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ["thread_pool_name"],
            self.queuing.items(),
        )
        yield _hist_family(
            prefix + "input_batch_size",
            "Tracks the batch size distribution on the inputs.",
            [],
            [((), self.input_size)],
        )
        yield _hist_family(
            prefix + "processed_batch_size",
            "Tracks the batch size distribution on processing.",
            [],
            [((), self.processed_size)],
        )
        yield _hist_family(
            prefix + "padding_size",
            "Tracks the padding size distribution on batches.",
            ["execution_batch_size"],
            self.padding.items(),
        )


class VersionBatchMetrics:
    """The `BatchObserver` of one version's batcher (loop thread only)."""

    def __init__(self, totals: BatchTotals, thread_pool_name: str) -> None:
        self._totals = totals
        pool = (thread_pool_name,)
        self._queuing = totals.queuing.setdefault(pool, Hist(QUEUING_LATENCY_US))
        self.rows = Hist(BATCH_ROWS)
        self.delay = Hist(DELAY_S)
        self.run = Hist(RUN_S)
        self.padding_rows = 0
        self.batches: dict[str, int] = {}
        self.depth = 0
        self.rejections = 0
        self.expirations = 0

    def batch_run(
        self, signature: str, rows: int, padded_rows: int, reason: str, seconds: float
    ) -> None:
        padding = padded_rows - rows
        self.rows.observe(rows)
        self.run.observe(seconds)
        self.padding_rows += padding
        self.batches[reason] = self.batches.get(reason, 0) + 1
        totals = self._totals
        totals.input_size.observe(rows)
        totals.processed_size.observe(padded_rows)
        key = (str(padded_rows),)
        hist = totals.padding.get(key)
        if hist is None:
            hist = totals.padding[key] = Hist(PADDING_ROWS)
        hist.observe(padding)

    def queued(self, signature: str, seconds_waited: float) -> None:
        self.delay.observe(seconds_waited)
        self._queuing.observe(seconds_waited * 1e6)

    def queue_depth(self, rows: int) -> None:
        self.depth = rows

    def rejected(self) -> None:
        self.rejections += 1

    def expired(self) -> None:
        self.expirations += 1


def _version_families(observers: dict[tuple[str, str], VersionBatchMetrics]) -> Iterator[Metric]:
    labels = ["model", "version"]
    items = list(observers.items())
    yield _hist_family(
        "hotserve_batch_size_rows",
        "Rows per batch run, padding excluded.",
        labels,
        [(key, o.rows) for key, o in items],
    )
    yield _hist_family(
        "hotserve_batch_queue_delay_seconds",
        "Time a request waited in the queue for its batch.",
        labels,
        [(key, o.delay) for key, o in items],
    )
    yield _hist_family(
        "hotserve_batch_run_seconds",
        "Model call time of one batch.",
        labels,
        [(key, o.run) for key, o in items],
    )
    padding = CounterMetricFamily("hotserve_batch_padding_rows", "Padding rows run.", labels=labels)
    batches = CounterMetricFamily(
        "hotserve_batches", "Batches run, by flush reason.", labels=[*labels, "reason"]
    )
    depth = GaugeMetricFamily("hotserve_batch_queue_depth_rows", "Rows queued.", labels=labels)
    rejected = CounterMetricFamily(
        "hotserve_batch_rejected", "Requests refused: queue full or closing.", labels=labels
    )
    expired = CounterMetricFamily(
        "hotserve_batch_expired",
        "Requests past their deadline before the model ran.",
        labels=labels,
    )
    for key, obs in observers.items():
        padding.add_metric(list(key), obs.padding_rows)
        for reason, n in obs.batches.items():
            batches.add_metric([*key, reason], n)
        depth.add_metric(list(key), obs.depth)
        rejected.add_metric(list(key), obs.rejections)
        expired.add_metric(list(key), obs.expirations)
    yield from (padding, batches, depth, rejected, expired)


class TimedLoader:
    """Wraps the loader to note when each version's load began (see `Metrics.version_ready`)."""

    def __init__(self, inner: Loader, started: dict[Path, float]) -> None:
        self._inner = inner
        self._started = started

    def load(self, path: Path) -> Servable:
        self._started[path] = time.monotonic()  # one dict store: atomic under the GIL
        try:
            return self._inner.load(path)
        except BaseException:
            self._started.pop(path, None)
            raise


class Metrics:
    """All of one app's metrics. `registry()` returns the model registry, None before start-up."""

    def __init__(self, registry: Callable[[], Registry | None]) -> None:
        self._registry = registry
        self.prometheus = CollectorRegistry()
        self.gather: Callable[[bytes], Awaitable[bytes]] | None = None
        self.requests = RequestMetrics()
        self._totals = BatchTotals()
        self._versions: dict[tuple[str, str], VersionBatchMetrics] = {}
        self._load_started: dict[Path, float] = {}
        self._load_seconds: dict[tuple[str, ...], Hist] = {}
        self._swaps: dict[str, int] = {}
        self.prometheus.register(self)

    # ---- hooks ---------------------------------------------------------------------------

    def timed_loader(self, loader: Loader) -> Loader:
        return TimedLoader(loader, self._load_started)

    def version_ready(self, sid: ServableId, path: Path) -> None:
        """A version loaded and warmed up (the runner factory is building its runner): record
        its load time, and a swap when it is newer than the version serving the model."""
        started = self._load_started.pop(path, None)
        if started is not None:
            hist = self._load_seconds.setdefault((sid.name,), Hist(LOAD_S))
            hist.observe(time.monotonic() - started)
        registry = self._registry()
        route = registry.snapshot.models.get(sid.name) if registry is not None else None
        if route is not None and route.latest is not None and route.latest.id.version < sid.version:
            self._swaps[sid.name] = self._swaps.get(sid.name, 0) + 1

    def batch_observer(self, sid: ServableId, policy: BatchPolicy) -> VersionBatchMetrics:
        """A fresh observer for one version's batcher (replacing any of an earlier load)."""
        observer = VersionBatchMetrics(self._totals, policy.thread_pool_name)
        self._versions[(sid.name, str(sid.version))] = observer
        return observer

    # ---- scrape --------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """The custom collector's families (prometheus_client's Collector protocol)."""
        yield from self.requests.collect()
        yield from self._totals.collect()
        yield self._states()
        yield from _version_families(self._versions)
        yield _hist_family(
            "hotserve_model_load_seconds",
            "Time from a version's load call to it being ready to serve (load + warmup).",
            ["model"],
            self._load_seconds.items(),
        )
        swaps = CounterMetricFamily(
            "hotserve_model_swaps",
            "A newly loaded version took over a model's default route from an older one.",
            labels=["model"],
        )
        for model, n in self._swaps.items():
            swaps.add_metric([model], n)
        yield swaps

    def _states(self) -> Metric:
        family = GaugeMetricFamily(
            "hotserve_model_version_state",
            "1 for the version's current state (TF Serving's ModelVersionStatus), else 0.",
            labels=["model", "version", "state"],
        )
        registry = self._registry()
        if registry is None:
            return family
        live: set[tuple[str, str]] = set()
        for name in registry.model_names():
            try:
                statuses = registry.status(name)
            except NotFound:
                continue
            for st in statuses:
                version = str(st.version)
                for state in STATES:
                    family.add_metric([name, version, state.value], float(st.state is state))
                if st.state is not VersionState.END:
                    live.add((name, version))
        # An unloaded version's batch series go with it (pruned here, at scrape time).
        for key in [k for k in self._versions if k not in live]:
            del self._versions[key]
        return family

    async def render_all(self) -> bytes:
        """`render`, merged with every other worker's under --workers N (`gather`, set by
        app.workers, receives this process's exposition and returns the merged one)."""
        own = self.render()
        return own if self.gather is None else await self.gather(own)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        text = generate_latest(self.prometheus)
        # prometheus_client names a counter family `<name>_total` in HELP/TYPE; TF Serving's
        # samples carry no suffix, so its TYPE line must not either (only lines with a leading
        # space match: HELP and TYPE, never samples).
        return text.replace(f" {REQUEST_COUNT}_total ".encode(), f" {REQUEST_COUNT} ".encode())


def install_routes(app: FastAPI, metrics: Metrics, monitoring: MonitoringConfig) -> None:
    """`GET <monitoring.path>` (TF Serving's, when `monitoring.enable`) and `GET /metrics`."""
    path = ""
    if monitoring.enable:
        path = monitoring.path if monitoring.path.startswith("/") else "/" + monitoring.path

        @app.get(
            path,
            tags=["monitoring"],
            summary="Prometheus metrics at TF Serving's --monitoring_config_file path",
            description="TF Serving's `:tensorflow:serving:*` series and hotserve's "
            "`hotserve_*` ones. Anything after the path (a query string) is a 400, as in TFS.",
            response_class=Response,
        )
        async def tf_scrape(request: Request) -> Response:
            query = request.url.query
            if query:
                msg = f"Unexpected path: {path}?{query}. Should be {path}"
                return JSONResponse({"error": msg}, status_code=400)
            return Response(await metrics.render_all(), media_type=CONTENT_TYPE)

    if path != "/metrics":

        @app.get(
            "/metrics",
            tags=["monitoring"],
            summary="Prometheus metrics, always on (hotserve's, for Kubernetes scraping)",
            description="The same exposition as the --monitoring_config_file path, served "
            "whatever the monitoring config says; query strings are ignored.",
            response_class=Response,
        )
        async def scrape() -> Response:
            return Response(await metrics.render_all(), media_type=CONTENT_TYPE)
