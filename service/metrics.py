"""Prometheus metrics of one daemon instance.

Each application owns a :class:`~prometheus_client.CollectorRegistry` (not the
process-global one), so tests and benchmarks can run several apps in one process.
Naming follows Prometheus practice: ``semcached_`` prefix, base units (seconds,
bytes), counters end in ``_total``, labels have few values (the route *template*,
never the raw path).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from semcached._version import __version__

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS_S", "HttpMetrics", "Metrics", "UploadMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Cache lookups are sub-millisecond; embedding and bulk calls take tens of ms.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)

# `_created` timestamps double the series count and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class HttpMetrics:
    """Request counts, latency and concurrency per route template."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "semcached_http_requests",
            "HTTP requests handled, by route template, method and status code (499: the "
            "client hung up before the answer).",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "semcached_http_request_duration_seconds",
            "Time from request start to response ready, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.in_flight = Gauge(
            "semcached_http_requests_in_flight",
            "Requests being handled now.",
            registry=registry,
        )
        # The request path touches plain ints and cached label children only: the
        # client library's per-call label lookup and locking cost more than the rest
        # of the bookkeeping (the event loop is the only writer).
        self._running = 0
        self.in_flight.set_function(lambda: self._running)
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def started(self) -> None:
        """A request began."""
        self._running += 1

    def finished(self, route: str, method: str, status: int, seconds: float) -> None:
        """A request that :meth:`started` ended with ``status`` after ``seconds``."""
        self._running -= 1
        key = (route, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        histogram = self._histograms.get(key[:2])
        if histogram is None:
            histogram = self._histograms[key[:2]] = self.duration.labels(route, method)
        histogram.observe(seconds)


class UploadMetrics:
    """The bytes of chunk puts in flight and the puts refused for want of room (bodies
    that came too slowly are counted as 408s by :class:`HttpMetrics`)."""

    def __init__(self, registry: CollectorRegistry, in_flight: Callable[[], float]) -> None:
        self.in_flight = Gauge(
            "semcached_kv_upload_bytes_in_flight",
            "Bytes of chunk puts being received or stored (declared lengths), of "
            "kv.max_inflight_upload_bytes.",
            registry=registry,
        )
        self.in_flight.set_function(in_flight)
        self.refused = Counter(
            "semcached_kv_uploads_refused",
            "Chunk puts refused with 503 because kv.max_inflight_upload_bytes was reached.",
            registry=registry,
        )


class Metrics:
    """The registry of one application and the metrics the core defines.

    Route groups define their own metrics on :attr:`registry`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        Info(
            "semcached_build",
            "Build information of the running daemon.",
            registry=self.registry,
        ).info({"version": __version__, "python": platform.python_version()})
        self.ready = Gauge(
            "semcached_ready",
            "1 when the daemon reports ready on /readyz, else 0.",
            registry=self.registry,
        )
        self.storage_full = Gauge(
            "semcached_storage_full",
            "1 while the store refuses inserts because it is full and nothing is left to "
            "evict (it still serves reads), else 0.",
            ["store"],
            registry=self.registry,
        )
        self.http = HttpMetrics(self.registry)

    def render(self) -> bytes:
        """The exposition text of every metric in the registry."""
        return generate_latest(self.registry)
