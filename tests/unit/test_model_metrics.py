"""The model server's in-flight gauge, the series its autoscaler reads: it counts each request from admission
until its reply, and a refused request never enters it."""

from __future__ import annotations

import threading
import time

import numpy as np

from services import config, protocol


class _HeldRuntime:
    """A model that answers class 0 once its gate opens."""

    name = "held"
    labels = [f"class-{i}" for i in range(10)]

    def __init__(self) -> None:
        self.gate = threading.Event()

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        assert self.gate.wait(30), "the test never opened the gate"
        out = np.zeros((len(images), 10), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def test_in_flight_gauge_counts_admitted_requests_until_they_are_answered() -> None:
    from services.model.metrics import ServerMetrics
    from services.model.pipeline import Pipeline

    cfg = config.load(
        config.ModelConfig,
        overrides={"max_queue_size": 2, "max_batch_size": 1, "max_batch_delay_ms": 0, "inference_workers": 1},
        environ={},
    )
    metrics, runtime = ServerMetrics(), _HeldRuntime()
    pipeline = Pipeline(cfg, runtime, metrics).start()
    gauge = lambda: metrics.registry.get_sample_value("zerolens_model_in_flight")  # noqa: E731
    answered: list[protocol.Reply] = []
    all_answered = threading.Event()

    def done(reply: protocol.Reply) -> None:
        answered.append(reply)
        if len(answered) == 3:
            all_answered.set()

    size = cfg.input_size
    try:
        for i in range(3):  # two fill the queue, the third is refused at once
            request = protocol.Request(
                f"r{i}", protocol.deadline_after_ms(30_000), image=bytes(size * size * 3),
                encoding=protocol.ENCODING_RGB8, shape=(size, size, 3),
            )  # fmt: skip
            pipeline.handle(request, time.monotonic(), done, client=b"web")
            assert gauge() == min(i + 1, 2) == pipeline.in_flight
        assert [r.status for r in answered] == [protocol.Status.OVERLOADED]
        assert (
            metrics.registry.get_sample_value(
                "zerolens_model_refused_requests_total", {"reason": "queue_full"}
            )
            == 1
        )
        runtime.gate.set()
        assert all_answered.wait(30)
        assert gauge() == 0 == pipeline.in_flight  # each reply gives its place back before it is sent
        assert [r.status for r in answered[1:]] == [protocol.Status.OK] * 2
        assert metrics.registry.get_sample_value("zerolens_model_queue_seconds_count") == 2
    finally:
        runtime.gate.set()
        pipeline.close()
