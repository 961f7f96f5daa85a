"""Peer: LitServe, a `LitAPI` with server-side batching, one worker process per core.

Configured as LitServe's docs recommend for CPU: `accelerator="cpu"`, `workers_per_device` = the number of
cores, `LitAPI(max_batch_size=..., batch_timeout=...)` for batching and `fast_queue=True` (ZeroMQ between
the API server and the workers, for over ~100 requests/s). The upload is JSON, `{"image": base64}`, as
LitServe's image examples send it: a multipart upload reaches the API server, but its form cannot be pickled
to the workers. Each worker decodes its batch's photos (zerolens's preprocessing) and runs one
single-threaded interpreter; the answer is JSON, the top 5 classes.

    python -m bench.peers.litserve_server PORT
"""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

import litserve as ls
import numpy as np

from bench.peers.model import MAX_BATCH, Classifier, decode

WORKERS = os.cpu_count() or 1
BATCH_TIMEOUT_S = 0.002  # zerolens's max_batch_delay_ms


class Classify(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.classifier = Classifier(threads=1)

    # no annotation: LitServe builds its route from this signature, and a typed `request` becomes a query
    def decode_request(self, request) -> np.ndarray:  # noqa: ANN001
        return decode(base64.b64decode(request["image"]))

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.probabilities(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"predictions": self.classifier.top_k(output)}


if __name__ == "__main__":
    api = Classify(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=WORKERS, fast_queue=True)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
