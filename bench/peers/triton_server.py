"""Peer: NVIDIA Triton Inference Server (the `tritonserver` in nvidia-pytriton), its dynamic batcher on CPU.

Configured as PyTriton's docs show for a batching model: `ModelConfig(max_batch_size=...,
batcher=DynamicBatcher(max_queue_delay_microseconds=100, preferred_batch_size=[...]))`, and one inference
callable per model instance, one instance per core (a list of callables is PyTriton's multi-instance model).
Each instance decodes its requests (zerolens's preprocessing) and runs its own single-threaded interpreter.
Clients speak the Open Inference Protocol over HTTP: a BYTES input `image`, binary tensor extension.

    python -m bench.peers.triton_server HTTP_PORT GRPC_PORT METRICS_PORT
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.peers.model import MAX_BATCH, Classifier, decode

MODEL_NAME = "efficientnet_lite0"
INSTANCES = os.cpu_count() or 1
MAX_QUEUE_DELAY_US = 100  # the value PyTriton's batching examples use


def infer_function() -> Callable[..., dict[str, np.ndarray]]:
    """One model instance: its own interpreters; decodes the batch's photos, then one invoke."""
    classifier = Classifier(threads=1)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        pixels = np.stack([decode(bytes(element)) for element in image[:, 0]])
        return {"probabilities": classifier.probabilities(pixels)}

    return infer


def main(http_port: int, grpc_port: int, metrics_port: int) -> None:
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_port=metrics_port,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[infer_function() for _ in range(INSTANCES)],
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=MAX_BATCH,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=MAX_QUEUE_DELAY_US,
                    preferred_batch_size=[n for n in (2, MAX_BATCH) if n <= MAX_BATCH],
                ),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main(*(int(port) for port in sys.argv[1:4]))
