"""Peer: Mosec, a decode stage and a dynamically batched inference stage, each a pool of processes.

Configured as Mosec's docs recommend for a CPU pipeline: CPU-bound preprocessing in its own stage with as
many workers as cores, then the model stage with `max_batch_size` and `max_wait_time` (dynamic batching),
one single-threaded interpreter per worker, one worker per core. The upload is the request body itself (the
ingress stage's `deserialize` keeps the bytes); the answer is JSON, the top 5 classes.

    python -m bench.peers.mosec_server --address 127.0.0.1 --port PORT
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from mosec import Server, Worker
from mosec.errors import ValidationError

from bench.peers.model import MAX_BATCH, Classifier, decode

WORKERS = os.cpu_count() or 1
MAX_WAIT_MS = 2  # zerolens's max_batch_delay_ms; Mosec's default (10 ms) would add 10 ms at c=1


class Decode(Worker):
    """Upload bytes → (224, 224, 3) uint8, with zerolens's preprocessing."""

    def deserialize(self, data: bytes) -> bytes:
        return data

    def forward(self, data: bytes) -> Any:
        try:
            return decode(data)
        except ValueError as exc:  # services.imaging.ImageError
            raise ValidationError(str(exc)) from exc


class Infer(Worker):
    """A batch of decoded images → the top 5 classes of each."""

    def __init__(self) -> None:
        super().__init__()
        self._classifier = Classifier(threads=1)

    def forward(self, data: list[Any]) -> list[dict[str, Any]]:
        probabilities = self._classifier.probabilities(np.stack(data))
        return [{"predictions": self._classifier.top_k(row)} for row in probabilities]

    def serialize(self, data: dict[str, Any]) -> bytes:
        return json.dumps(data).encode()


if __name__ == "__main__":
    server = Server()
    server.append_worker(Decode, num=WORKERS)
    server.append_worker(Infer, num=WORKERS, max_batch_size=MAX_BATCH, max_wait_time=MAX_WAIT_MS)
    server.run()
