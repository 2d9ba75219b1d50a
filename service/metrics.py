"""The Prometheus metrics, defined in one place, one set per app.

With several worker processes, prometheus_client's multiprocess mode is used: each worker writes
its values to files under `PROMETHEUS_MULTIPROC_DIR` (the CLI sets it up before the workers start)
and `/metrics` sums them, so the figures cover every worker whichever one answers the scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.connections import SHED_REASONS
from service.statistics import VersionStatistics

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UPLOADS_BEHIND = "uploads_behind"
"""Image uploads refused because their preparation (decoding, filtering) would miss the budget."""
REJECT_REASONS = ("over_budget", "queue_full", "shutting_down", UPLOADS_BEHIND)
CLIENT_DISCONNECTED = "client_disconnected"
DEADLINE = "deadline"
DROP_REASONS = (DEADLINE, CLIENT_DISCONNECTED, "cancelled")
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
_NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def resident_bytes() -> int | None:
    """This process's resident set size (Linux), without a dependency such as psutil."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def cgroup_memory_limit() -> int | None:
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT:
            return int(text)
        return None  # "max": no limit
    return None


def multiprocess_directory() -> Path | None:
    """Where the workers of a multi-process server share their metrics (set by `mnist-serve`)."""
    directory = os.environ.get(MULTIPROC_ENV)
    return Path(directory) if directory else None


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time from request start to response end.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size", "Images per model call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "inference_queue_depth",
            "Images waiting for the model, per model version.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_wait = Histogram(
            "inference_queue_wait_seconds",
            "Time a request waited before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "inference_duration_seconds",
            "Duration of one model call (one batch).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "predictions_total",
            "Images classified, by predicted digit.",
            ["model", "version", "digit"],
            registry=r,
        )
        self.accepted = Counter(
            "requests_accepted_total",
            "Inference requests admitted to a model's queue.",
            registry=r,
        )
        self.rejected = Counter(
            "requests_rejected_total",
            "Inference requests refused before queueing (over_budget: would miss its time "
            "budget; queue_full; shutting_down; uploads_behind: image preparation would).",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            "requests_dropped_total",
            "Admitted requests given up before the model ran them (deadline, "
            "client_disconnected, cancelled).",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "model_info",
            "1 for each model version being served.",
            ["model", "version"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "model_load_seconds",
            "Time to load and warm one model version.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.in_flight = Gauge(
            "inference_in_flight_requests",
            "Requests waiting for or inside a model call.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.reloads = Counter(
            "model_reloads_total",
            "Model version loads, by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.repository_errors = Counter(
            "model_repository_errors_total",
            "Polls of the model repository that could not read it (the served versions stay).",
            registry=r,
        )
        self.model_load_failures = Counter(
            "model_load_failures_total",
            "Model versions that could not be loaded.",
            ["model"],
            registry=r,
        )
        self.grpc_requests = Counter(
            "grpc_requests_total",
            "gRPC calls answered, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_duration = Histogram(
            "grpc_request_duration_seconds",
            "Time from a gRPC call's start to its answer.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_connections = Gauge(
            "http_connections_open",
            "Open HTTP client connections.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.http_connections_shed = Counter(
            "http_connections_shed_total",
            "HTTP connections closed at the connection limit (idle_closed: an idle one, to make "
            "room; over_limit: a new one, as none was idle).",
            ["reason"],
            registry=r,
        )
        self.http_send_stalls = Counter(
            "http_connections_send_stalled_total",
            "HTTP connections reset: the client stopped taking its response for the send "
            "timeout, or took it slower than 240 bytes/s.",
            registry=r,
        )
        self.resident_memory = Gauge(
            "process_resident_memory_bytes",
            "Resident memory of the server (summed over its worker processes).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.memory_limit = Gauge(
            "process_memory_limit_bytes",
            "The memory limit of the server's cgroup (the container limit); absent if none.",
            multiprocess_mode="livemax",
            registry=r,
        )
        # Every label value that can appear, at 0 from the start: a query, alert or rate over
        # a series that does not exist yet returns nothing rather than 0.
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for reason in SHED_REASONS:
            self.http_connections_shed.labels(reason)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.sample_process()

    def sample_process(self) -> None:
        """Memory now (called at every repository poll, so each worker reports its own)."""
        rss = resident_bytes()
        if rss is not None:
            self.resident_memory.set(rss)
        limit = cgroup_memory_limit()
        if limit is not None:
            self.memory_limit.set(limit)

    def render(self) -> tuple[bytes, str]:
        if multiprocess_directory() is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


RENDERS_PER_SECOND = 10


class ScrapeBudget:
    """The metrics rendered at most `per_second` times a second; scrapes past that in the same
    second get the last render, at most a second old.

    A render costs the event loop ~7.6 ms here (40 KB of text from prometheus_client; more with
    several workers, whose files it reads). A client scraping 131 times a second took the whole
    core from inference, and /metrics has no key and no admission. Prometheus scrapes a target
    every few seconds, and several replicas of it no more than a few times a second.
    """

    def __init__(
        self,
        render: Callable[[], tuple[bytes, str]],
        per_second: int = RENDERS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._render = render
        self._per_second = per_second
        self._clock = clock
        self._window = -1.0
        self._renders = 0
        self._last: tuple[bytes, str] | None = None

    def body(self) -> tuple[bytes, str]:
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._renders = now, 0
        if self._last is None or self._renders < self._per_second:
            self._renders += 1
            self._last = self._render()
        return self._last


class BatcherMetrics:
    """Adapts `Metrics` to the batcher's observer protocol, for one model version."""

    def __init__(
        self, metrics: Metrics, model: str, version: int, statistics: VersionStatistics
    ) -> None:
        self._m = metrics
        self._queue_depth = metrics.queue_depth.labels(model, str(version))
        self._statistics = statistics

    def batch_done(self, size: int, requests: int, seconds: float) -> None:
        self._m.batch_size.observe(size)
        self._m.inference_duration.observe(seconds)
        self._statistics.computed(size, requests, seconds)

    def queue_wait(self, seconds: float) -> None:
        self._m.queue_wait.observe(seconds)
        self._statistics.queued(seconds)

    def queue_depth(self, images: int) -> None:
        self._queue_depth.set(images)

    def accepted(self) -> None:
        self._m.accepted.inc()

    def rejected(self, reason: str) -> None:
        self._m.rejected.labels(reason).inc()

    def dropped(self, reason: str) -> None:
        self._m.dropped.labels(reason).inc()
