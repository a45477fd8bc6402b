"""Prometheus metrics (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: The ``method`` label values besides ``other``: any other method name a client invents is counted as
#: ``other``, so that it cannot add series (the label set stays bounded).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


class Metrics:
    """The service's metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "cmah_request_duration_seconds", "HTTP request latency by route", ["method", "route", "status"],
            registry=self.registry)
        self.batch_size = Histogram(
            "cmah_inference_batch_size", "items per model call of the dynamic batcher", ["kind"],
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.index_items = Gauge(
            "cmah_index_items", "items in each search index", ["modality", "bits"], registry=self.registry)
        self.queue_depth = Gauge(
            "cmah_inference_queue_depth", "requests waiting for the model", registry=self.registry)
        self.jobs = Counter("cmah_jobs_total", "finished indexing jobs by final state", ["state"],
                            registry=self.registry)

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind=kind).observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LatencyMiddleware:
    """Records ``cmah_request_duration_seconds`` per route template (e.g. ``/api/v1/items/{item_id}``), with
    the standard method names (others are ``other``); unmatched paths share the route ``unmatched``."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics | None]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                method = scope.get("method", "")
                metrics.request_seconds.labels(method=method if method in HTTP_METHODS else "other", route=path,
                                               status=str(status)).observe(time.perf_counter() - t0)
