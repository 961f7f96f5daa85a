"""Inference runtimes (TFLite or Keras): a uint8 image batch in, class probabilities out.

This, keras_runtime.py and the build-time exporter (services/exporter) are the only code that imports
TensorFlow or LiteRT. Here it happens inside functions: the tflite path needs only ai-edge-litert (fast to
import), never TensorFlow (seconds); the keras path on jax or torch (keras_runtime.py) never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services import artifacts
from services.artifacts import APPLICATION_PREPROCESSING, REBUILD, imagenet_labels
from services.config import ModelConfig
from services.model import affinity
from services.model.model_io import (
    ModelError,
    check_input,
    checked,
    is_probabilities,
    preprocess_into,
    softmax,
)

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What the model server needs of a model; defined here, where importing it loads no TensorFlow."""

    name: str
    input_size: int
    labels: list[str]

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 → (N, classes) float32 probabilities, rows in input order."""
        ...


def _unloadable(path: str | Path, exc: Exception) -> ModelError:
    """A one-line ModelError for a model file its loader refused (TensorFlow's messages span lines)."""
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return ModelError(f"{path} cannot be loaded ({type(exc).__name__}: {reason[:200]}): {REBUILD}")


def open_interpreter(path: str | Path, threads: int, batch: int) -> Any:
    """A TFLite interpreter for `path`, resized to `batch` and allocated (LiteRT, else TensorFlow's).

    :raise ModelError: the file is missing or not a model this interpreter can run.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the model extra installs ai-edge-litert
        from tensorflow.lite.python.interpreter import Interpreter
    try:  # LiteRT reports a bad flatbuffer or an unsupported op as ValueError or RuntimeError
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        shape = list(interpreter.get_input_details()[0]["shape"])
        interpreter.resize_tensor_input(
            interpreter.get_input_details()[0]["index"], [batch, *shape[1:]], strict=True
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, IndexError) as exc:
        raise _unloadable(path, exc) from exc
    return interpreter


def _check_float_io(path: Path, input_details: dict[str, Any], output_details: dict[str, Any]) -> None:
    """:raise ModelError: the model does not take float32 pixels and give float32 scores, as exported ones do
    (the int8 model included: it quantizes and dequantizes in-graph)."""
    for what, details in (("takes", input_details), ("gives", output_details)):
        if details["dtype"] != np.float32:
            raise ModelError(f"{path} {what} {np.dtype(details['dtype']).name}, not float32: {REBUILD}")


class TFLiteRuntime:
    """Interpreters allocated once, one per allowed batch size; a batch runs as chunks of those sizes.

    A batch of 7 runs as 4 + 2 + 1, never padded to 8: on a CPU the cost per image does not fall with the
    batch size, so padding is pure waste.

    Threads: `inference_workers` batches run at once, each with its own set of `batch_inference_threads`
    interpreters: under load one single-threaded invoke per core wastes nothing, while a multi-threaded
    invoke stalls whenever one of its threads is descheduled (decoders want the cores too). A single image
    that arrives while no other inference runs takes the one `inference_threads` interpreter instead: an
    idle server answers a lone image fastest with several threads on it.

    Invoke releases the GIL, so decoding overlaps inference.
    """

    def __init__(self, name: str, path: Path, labels: list[str], cfg: ModelConfig) -> None:
        self.name, self.labels, self._mode = name, labels, cfg.preprocessing
        self._sizes = cfg.batch_sizes()
        # An interpreter is not thread-safe: one set per inference worker, checked out for each call.
        self._pool: queue.SimpleQueue[dict[int, Any]] = queue.SimpleQueue()
        for _ in range(cfg.inference_workers):
            self._pool.put({n: open_interpreter(path, cfg.batch_inference_threads, n) for n in self._sizes})
        self._solo: dict[int, Any] | None = None  # the lone image's interpreter, taken only when free
        self._pinning: affinity.Pinning | None = None  # its threads' CPUs (see affinity.py)
        if cfg.inference_threads != cfg.batch_inference_threads and 1 in self._sizes:
            self._solo, self._pinning = affinity.pin_pool(
                cfg.pin_inference_threads,
                lambda: {1: open_interpreter(path, cfg.inference_threads, 1)},
                cfg.inference_threads,
            )
        self._solo_lock, self._active_lock, self._active = threading.Lock(), threading.Lock(), 0
        probe = self._pool.get()
        details = probe[self._sizes[0]].get_input_details()[0]
        output = probe[self._sizes[0]].get_output_details()[0]
        self._pool.put(probe)
        self.input_size = int(details["shape"][1])
        _check_float_io(path, details, output)
        self._softmax = False
        self._softmax = not is_probabilities(
            self.predict_batch(np.zeros((1, *details["shape"][1:]), np.uint8))
        )

    def _run(self, interpreters: dict[int, Any], images: np.ndarray) -> np.ndarray:
        """One invoke on the interpreter of exactly len(images)."""
        interpreter = interpreters[len(images)]
        buffer = interpreter.tensor(interpreter.get_input_details()[0]["index"])()  # a view of the input
        preprocess_into(images, self._mode, buffer)
        del buffer  # invoke refuses to run while a view of its buffers is alive
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])  # a copy

    def _chunks(self, n: int) -> list[int]:
        """n as a sum of allowed sizes, largest first (sizes are padded up only below the smallest one)."""
        out = []
        while n > 0:
            size = next((s for s in reversed(self._sizes) if s <= n), self._sizes[0])
            out.append(size)
            n -= size
        return out

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        check_input(images, self.input_size)
        with self._active_lock:
            self._active += 1
            alone = self._active == 1
        try:
            solo = alone and len(images) == 1 and self._solo is not None
            if solo and self._solo_lock.acquire(blocking=False):
                try:
                    with self._pinning.held() if self._pinning is not None else contextlib.nullcontext():
                        out = self._run(self._solo, images)
                finally:
                    self._solo_lock.release()
            else:
                interpreters = self._pool.get()
                try:
                    out = self._run_chunks(interpreters, images)
                finally:
                    self._pool.put(interpreters)
        finally:
            with self._active_lock:
                self._active -= 1
        return checked(softmax(out) if self._softmax else out, len(images), self.labels)

    def _run_chunks(self, interpreters: dict[int, Any], images: np.ndarray) -> np.ndarray:
        chunks, start = [], 0
        for size in self._chunks(len(images)):
            part = images[start : start + size]
            if len(part) < size:  # only when 1 is not an allowed size
                part = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), part.dtype)])
            chunks.append(self._run(interpreters, part)[: len(images) - start])
            start += size
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.labels)), np.float32)


def _read_manifest(directory: Path, cfg: ModelConfig, model_file: str) -> tuple[str, list[str]]:
    """Verify the artifacts (each file against the manifest) and the configuration; return name, labels."""
    started = time.perf_counter()
    try:
        manifest = artifacts.verify(directory, needed=(model_file, artifacts.LABELS))
        labels = artifacts.read_labels(directory, manifest)
    except artifacts.ArtifactError as exc:
        raise ModelError(str(exc)) from None
    log.info(
        "%s: %d files match the manifest (%.0f ms)",
        directory, len(manifest["files"]), (time.perf_counter() - started) * 1000,
    )  # fmt: skip
    for key in ("input_size", "preprocessing"):
        if manifest.get(key) != getattr(cfg, key):
            raise ModelError(
                f"{directory} was built for {key}={manifest.get(key)!r}, config has {getattr(cfg, key)!r}"
            )
    if manifest.get("name") != cfg.model_name:
        log.warning("model_name %r, but %s holds %r", cfg.model_name, directory, manifest.get("name"))
    return cfg.model_name, labels


def _load_keras_file(path: Path) -> Any:
    """keras.saving.load_model without compiling; a file Keras refuses is a ModelError naming it."""
    import keras

    if not zipfile.is_zipfile(path):  # Keras calls any file that is not a zip archive "not found"
        raise ModelError(f"{path} cannot be loaded (not a .keras zip archive): {REBUILD}")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise _unloadable(path, exc) from exc


def load_runtime(cfg: ModelConfig) -> Runtime:
    """The runtime that cfg.model_runtime names, loaded from cfg.model_dir (or cfg.keras_application).

    :raise ModelError: missing, altered, unloadable or mismatched artifacts, or output of the wrong shape.
    """
    started = time.perf_counter()
    directory = Path(cfg.model_dir)
    if cfg.model_runtime == "tflite":
        if cfg.keras_application:
            raise ModelError("keras_application needs model_runtime=keras (or export it to a model_dir)")
        model_file = artifacts.TFLITE_FILES[cfg.model_precision]
        name, labels = _read_manifest(directory, cfg, model_file)
        runtime: Runtime = TFLiteRuntime(name, directory / model_file, labels, cfg)
    elif cfg.model_runtime == "keras":
        if cfg.model_precision != "float":
            raise ModelError(
                f"model_precision={cfg.model_precision} needs model_runtime=tflite (the Keras model is float)"
            )
        if cfg.keras_application:
            expected = APPLICATION_PREPROCESSING.get(cfg.keras_application)
            if expected is None:
                raise ModelError(f"unknown keras_application {cfg.keras_application!r}")
            if expected != cfg.preprocessing:
                raise ModelError(
                    f"{cfg.keras_application} needs preprocessing={expected!r}, not {cfg.preprocessing!r}"
                )
            name, labels = cfg.keras_application.lower(), imagenet_labels()
        else:  # verified before Keras and its backend load (seconds): a broken directory fails at once
            name, labels = _read_manifest(directory, cfg, "model.keras")
        from services.model.keras_runtime import KerasRuntime, prepare_backend

        prepare_backend()  # before Keras (or anything) can initialise the GPUs
        if cfg.keras_application:
            import keras

            model = getattr(keras.applications, cfg.keras_application)(weights="imagenet")
        else:
            model = _load_keras_file(directory / "model.keras")
        runtime = KerasRuntime(name, model, labels, cfg)
    else:
        raise ModelError(f"unknown model_runtime {cfg.model_runtime!r}")
    if runtime.input_size != cfg.input_size:
        raise ModelError(f"the model takes {runtime.input_size} px images, config says {cfg.input_size}")
    log.info("loaded %s (%s) in %.2f s", runtime.name, cfg.model_runtime, time.perf_counter() - started)
    return runtime


def warm_up(runtime: Runtime, sizes: Iterable[int]) -> None:
    """Run every allowed batch size once, so the first real requests pay no allocation or tracing cost."""
    for n in sizes:
        started = time.perf_counter()
        runtime.predict_batch(np.zeros((n, runtime.input_size, runtime.input_size, 3), np.uint8))
        log.info("warm-up batch %d: %.1f ms", n, (time.perf_counter() - started) * 1000)
