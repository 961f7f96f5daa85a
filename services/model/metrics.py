"""The model server's Prometheus metrics, on a registry of its own (one per server instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets from 1 ms to 10 s: batching trades a few ms, overload shows up in the seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class ServerMetrics:
    """Counters and histograms a platform team autoscales and alerts on (queue time above all)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.info = Info("zerolens_model", "Model served by this process", registry=r)
        self.requests = Counter(
            "zerolens_model_requests", "Requests answered, by protocol status", ["status"], registry=r
        )
        self.malformed = Counter(
            "zerolens_model_malformed_messages", "Messages that did not follow the protocol", registry=r
        )
        # Malformed messages not worth an answer: no envelope to route one by, too many frames or bytes.
        self.dropped = Counter(
            "zerolens_model_dropped_messages",
            "Messages dropped without a reply, by reason",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "zerolens_model_refused_requests",
            "Requests answered OVERLOADED: queue_full, client_limit, draining, decode_busy (decode memory)",
            ["reason"],
            registry=r,
        )

        def latency(name: str, doc: str) -> Histogram:
            return Histogram(f"zerolens_model_{name}_seconds", doc, buckets=_LATENCY_BUCKETS, registry=r)

        self.request_seconds = latency("request", "Receipt to reply, per request")
        self.queue_seconds = latency("queue", "Time a request waited for a decoder and for its batch")
        self.preprocess_seconds = latency("preprocess", "Decode + resize per image")
        self.inference_seconds = latency("inference", "One model call per batch")
        self.batch_size = Histogram(
            "zerolens_model_batch_size", "Images per model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            "zerolens_model_in_flight", "Requests admitted and not yet answered", registry=r
        )
        self.ready = Gauge("zerolens_model_ready", "1 when the model is warm and the workers run", registry=r)

    def observe_batch(self, size: int, inference_s: float) -> None:
        """Batcher observer: one call per model call."""
        self.batch_size.observe(size)
        self.inference_seconds.observe(inference_s)
