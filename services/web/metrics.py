"""The web tier's Prometheus metrics and the /metrics exposition (multiprocess-aware under gunicorn).

prometheus-client picks its value storage when it is first imported: with PROMETHEUS_MULTIPROC_DIR set
(gunicorn.conf.py sets it in the master before any worker imports this module) every worker writes its
samples to files there and /metrics sums them; without it (e.g. the Flask test client) the default registry
is used.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from services.config import PROMETHEUS_MULTIPROC_ENV as MULTIPROC_ENV

# From 5 ms (a cached page) to 30 s (past every deadline): classification sits around 20–500 ms.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)

# Only Counters and Histograms: Gauges would need a multiprocess_mode each.
HTTP_REQUESTS = Counter(
    "zerolens_web_http_requests", "HTTP requests answered, by route and status code", ["route", "code"]
)
HTTP_SECONDS = Histogram(
    "zerolens_web_http_request_seconds", "Time to answer an HTTP request", ["route"], buckets=_LATENCY_BUCKETS
)
MODEL_SECONDS = Histogram(
    "zerolens_web_model_roundtrip_seconds",
    "Model server round trip per call, retries included",
    ["op"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_CALLS = Counter(
    "zerolens_web_model_calls",
    "Model server calls by outcome: a reply status (ok, overloaded, bad_image, ...), timeout or unavailable",
    ["op", "outcome"],
)
MODEL_RETRIES = Counter(
    "zerolens_web_model_retries",
    "Extra attempts by reason: timeout (no answer), overloaded (server busy; resent to another server)",
    ["reason"],
)

SHED = Counter(
    "zerolens_web_shed_requests",
    "Requests answered 503 before any work, by reason: saturated (the process's admission limit to the model "
    "tier was reached), waited (it waited max_queue_wait_ms or most of its deadline for a thread) or queue "
    "(refused as it arrived, while requests were waiting that long)",
    ["reason"],
)
DROPPED = Counter(
    "zerolens_web_dropped_requests",
    "Requests not worked on because their client left, by stage: incomplete (closed before the whole "
    "request arrived), too_slow (408: not sent within the client timeouts), before_decode or before_send "
    "(to the model server)",
    ["stage"],
)


def record_call(op: str, outcome: str, seconds: float) -> None:
    """Count one finished model call and its round trip."""
    MODEL_CALLS.labels(op, outcome).inc()
    MODEL_SECONDS.labels(op).observe(seconds)


def record_retry(reason: str) -> None:
    """Count one extra attempt."""
    MODEL_RETRIES.labels(reason).inc()


def record_shed(reason: str) -> None:
    """Count one request refused before any work."""
    SHED.labels(reason).inc()


def record_dropped(stage: str) -> None:
    """Count one request left because its client had gone."""
    DROPPED.labels(stage).inc()


def exposition() -> tuple[bytes, str]:
    """The current samples in Prometheus text format, summed over workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _start_timer() -> None:
    g.metrics_start = time.perf_counter()


def _observe(response: Response) -> Response:
    # The URL rule, not the path, so that scanners probing random paths cannot explode the label set.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
    start = g.get("metrics_start")
    if start is not None:
        HTTP_SECONDS.labels(route).observe(time.perf_counter() - start)
    return response


def init_app(app: Flask) -> None:
    """Time and count every request the app answers, error pages included."""
    app.before_request(_start_timer)
    app.after_request(_observe)
