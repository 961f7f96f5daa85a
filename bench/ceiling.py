"""The two reference numbers every server is compared with, measured in-process on the same photos.

ceiling: decode + resize + inference, one image after another in one process, no network
         (TFLite, XNNPACK, `inference_threads` threads, the production preprocessing).
limit:   cores × 1000 / (decode core-ms + inference core-ms), each measured on one thread (inference at its
         best batch size): what a server could do if every core did nothing but this work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from bench.photos import Photo
from services import imaging
from services.config import ModelConfig, load
from services.model.runtime import load_runtime


@dataclass(frozen=True)
class Reference:
    ceiling_rps: float
    ceiling_latency_ms: float  # median single-image decode + inference
    decode_core_ms: float
    inference_core_ms: float
    best_batch: int
    cores: int

    @property
    def limit_rps(self) -> float:
        return self.cores * 1000 / (self.decode_core_ms + self.inference_core_ms)


def mean(first: Reference, last: Reference) -> Reference:
    """The reference measured before and after the systems, averaged: the box drifts during a run."""
    return Reference(
        ceiling_rps=(first.ceiling_rps + last.ceiling_rps) / 2,
        ceiling_latency_ms=(first.ceiling_latency_ms + last.ceiling_latency_ms) / 2,
        decode_core_ms=(first.decode_core_ms + last.decode_core_ms) / 2,
        inference_core_ms=(first.inference_core_ms + last.inference_core_ms) / 2,
        best_batch=first.best_batch,
        cores=first.cores,
    )


def _decode(photo: Photo, cfg: ModelConfig) -> np.ndarray:
    return np.asarray(imaging.load_rgb(photo.data, cfg.input_size, cfg.crop_fraction, cfg))


def measure(photos: list[Photo], model_dir: str, duration_s: float = 5.0, threads: int = 2) -> Reference:
    """Measure the ceiling and the core costs; takes about 3 × duration_s."""
    cfg = load(ModelConfig, overrides={"model_dir": model_dir, "inference_threads": threads}, environ={})
    runtime = load_runtime(cfg)
    runtime.predict_batch(np.zeros((1, cfg.input_size, cfg.input_size, 3), np.uint8))

    # Ceiling: the single-stream loop.
    latencies, n, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < duration_s:
        t0 = time.perf_counter()
        runtime.predict_batch(_decode(photos[n % len(photos)], cfg)[None])
        latencies.append((time.perf_counter() - t0) * 1000)
        n += 1
    ceiling_rps = n / (time.perf_counter() - start)

    # Decode cost on one thread: process CPU time over whole passes through the photo set.
    cpu0, passes, start = time.process_time(), 0, time.perf_counter()
    while time.perf_counter() - start < duration_s / 2 or passes == 0:
        for photo in photos:
            _decode(photo, cfg)
        passes += 1
    decode_core_ms = (time.process_time() - cpu0) * 1000 / (passes * len(photos))

    # Inference cost on one thread, at each allowed batch size; the best one counts.
    one = load(ModelConfig, overrides={"model_dir": model_dir, "inference_threads": 1}, environ={})
    single = load_runtime(one)
    per_image = {}
    for batch in one.batch_sizes():
        x = np.zeros((batch, one.input_size, one.input_size, 3), np.uint8)
        single.predict_batch(x)
        cpu0, calls, start = time.process_time(), 0, time.perf_counter()
        while time.perf_counter() - start < duration_s / 2 / len(one.batch_sizes()) or calls < 2:
            single.predict_batch(x)
            calls += 1
        per_image[batch] = (time.process_time() - cpu0) * 1000 / (calls * batch)
    best = min(per_image, key=per_image.get)
    return Reference(
        ceiling_rps=ceiling_rps,
        ceiling_latency_ms=float(np.median(latencies)),
        decode_core_ms=decode_core_ms,
        inference_core_ms=per_image[best],
        best_batch=best,
        cores=os.cpu_count() or 1,
    )
