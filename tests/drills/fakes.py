"""A model server in the test's own process, with a runtime the drill controls, behind real ZeroMQ (TCP)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from services import config
from services.config import ModelConfig
from services.model.health import HealthServer
from services.model.metrics import ServerMetrics
from services.model.server import ModelServer


class HangingRuntime:
    """Answers at once, except the first call after `hang()`, which blocks until `release()`."""

    name = "hanging"
    labels = [f"class-{i}" for i in range(10)]

    def __init__(self) -> None:
        self._armed = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.hung_at: float | None = None
        self.images = 0  # inferred so far

    def hang(self) -> None:
        self._armed = True

    def release(self) -> None:
        self._released.set()

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            hang, self._armed = self._armed, False
            self.images += len(images)
        if hang:
            self.hung_at = time.monotonic()
            self._released.wait(120)
        out = np.full((len(images), 10), 0.01, dtype=np.float32)
        out[:, 3] = 0.91
        return out


class InProcess:
    """A ModelServer and its health port on loopback ports; plaintext (these drills are not about keys)."""

    def __init__(self, **settings: Any) -> None:
        overrides = {"host": "127.0.0.1", "port": 0, "zmq_security": "plaintext", **settings}
        cfg = config.load(ModelConfig, overrides=overrides, environ={})
        self.runtime, metrics = HangingRuntime(), ServerMetrics()
        self.server = ModelServer(cfg, self.runtime, metrics).start()
        probes = (self.server.liveness, self.server.readiness)
        self.health = HealthServer("127.0.0.1", 0, *probes, metrics.registry).start()

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.health.port}{path}"

    def close(self) -> None:
        self.runtime.release()
        self.health.stop()
        self.server.stop(drain_timeout_s=5)
