"""The Keras runtime on whichever backend KERAS_BACKEND names: tensorflow (the default), jax or torch.

A GPU host may have JAX or PyTorch and no TensorFlow: on those backends nothing here imports TensorFlow.
Each backend gets the forward that suits it: tensorflow a tf.function with a dynamic batch, jax a stateless
`jax.jit` compiled ahead of time for each allowed batch size, torch an eager call in inference mode. On jax
and torch the uint8 pixels cross to the device and are normalised there: a quarter of float32's bytes on
the bus, and no per-pixel work on the host's few cores.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from services.config import ModelConfig
from services.model.model_io import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_input,
    checked,
    is_probabilities,
    preprocess_into,
    softmax,
)

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) uint8 → (N, classes) float32, N ≥ 1


def backend_name() -> str:
    """The backend Keras will use, read without importing Keras (it reads the same variable)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def prepare_backend() -> None:
    """GPU memory as needed, not all of it at start; must run before the backend initialises the devices."""
    backend = backend_name()
    if backend == "tensorflow":
        _enable_tf_memory_growth()
    elif backend == "jax":  # JAX would otherwise take 75 % of the GPU's memory at its first array
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _enable_tf_memory_growth() -> None:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # devices already initialised by someone else
            log.warning("cannot enable memory growth on %s: %s", gpu.name, exc)
    log.info("TensorFlow sees %d GPU(s)", len(tf.config.list_physical_devices("GPU")))


def normalise(images: Any, mode: str) -> Any:
    """preprocess_into's scaling in keras.ops, on the backend's own tensors (inside a jax trace too)."""
    from keras import ops

    x = ops.cast(images, "float32")
    if mode == "tf":
        return ops.subtract(ops.multiply(x, 1 / 127.5), 1.0)
    if mode == "torch":
        return ops.divide(ops.subtract(ops.multiply(x, 1 / 255), IMAGENET_MEAN), IMAGENET_STD)
    if mode == "caffe":
        return ops.subtract(ops.flip(x, axis=-1), CAFFE_MEAN_BGR)
    if mode != "raw":
        raise ValueError(f"unknown preprocessing {mode!r}")
    return x


def _tensorflow_forward(model: Any, size: int, mode: str) -> tuple[Forward, str]:
    """One traced function with a dynamic batch (model.predict's fixed cost per call would outweigh a small
    batch's inference), normalised on the host."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    traced = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def forward(images: np.ndarray) -> np.ndarray:
        x = np.empty(images.shape, np.float32)
        preprocess_into(images, mode, x)
        return traced(x).numpy()

    return forward, "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


class JaxForward:
    """model.stateless_call under jax.jit, compiled ahead of time once per allowed batch size.

    A batch is padded up to the next allowed size (a longer one runs as chunks of the largest): on an
    accelerator a few padded rows cost far less than a launch per extra chunk, and a fixed set of shapes is
    all that ever compiles, so nothing compiles under load (a shape with no executable fails, it never
    compiles silently).
    """

    def __init__(self, model: Any, sizes: list[int], size: int, mode: str) -> None:
        import jax

        self.traces = 0  # how often the forward was traced: once per allowed size, at load
        self._sizes = sizes
        self._trainable = [v.value for v in model.trainable_variables]
        self._non_trainable = [v.value for v in model.non_trainable_variables]

        def forward(trainable: list[Any], non_trainable: list[Any], images: Any) -> Any:
            self.traces += 1  # runs only while tracing
            out, _ = model.stateless_call(trainable, non_trainable, normalise(images, mode), training=False)
            return out

        jitted = jax.jit(forward)
        self._compiled = {
            n: jitted.lower(
                self._trainable, self._non_trainable, jax.ShapeDtypeStruct((n, size, size, 3), np.uint8)
            ).compile()
            for n in sizes
        }
        self.device = str(jax.devices()[0])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        largest, outputs = self._sizes[-1], []
        for start in range(0, len(images), largest):
            part = images[start : start + largest]
            n = next(s for s in self._sizes if s >= len(part))
            if n > len(part):  # padded on the host: slicing a device array would compile per shape
                part = np.concatenate([part, np.zeros((n - len(part), *part.shape[1:]), np.uint8)])
            out = self._compiled[n](self._trainable, self._non_trainable, part)
            outputs.append(np.asarray(out)[: min(largest, len(images) - start)])
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]


def _torch_forward(model: Any, mode: str, cpu_threads: int) -> tuple[Forward, str]:
    """An eager call in inference mode (no autograd), the tensors on the model's device (cuda when there)."""
    import torch

    device = model.weights[0].value.device
    if device.type == "cpu":  # as TFLite's batches: a multi-threaded op stalls on a descheduled thread
        torch.set_num_threads(cpu_threads)
    model.eval()

    def forward(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(images).to(device)
            return model(normalise(x, mode), training=False).float().cpu().numpy()

    return forward, str(device)


class KerasRuntime:
    """A Keras model behind its backend's forward (see the module's docstring)."""

    def __init__(self, name: str, model: Any, labels: list[str], cfg: ModelConfig) -> None:
        import keras

        self.name, self.labels = name, labels
        self.input_size = int(model.input_shape[1])
        self.backend = keras.backend.backend()
        started = time.perf_counter()
        if self.backend == "jax":
            jax_forward = JaxForward(model, cfg.batch_sizes(), self.input_size, cfg.preprocessing)
            self._forward: Forward = jax_forward
            self.device = jax_forward.device
        elif self.backend == "torch":
            self._forward, self.device = _torch_forward(model, cfg.preprocessing, cfg.batch_inference_threads)
        else:
            self._forward, self.device = _tensorflow_forward(model, self.input_size, cfg.preprocessing)
        log.info(
            "keras on %s, %s: forward ready in %.1f s",
            self.backend,
            self.device,
            time.perf_counter() - started,
        )
        self._softmax = False
        self._softmax = not is_probabilities(
            self.predict_batch(np.zeros((1, *model.input_shape[1:]), np.uint8))
        )

    @property
    def traces(self) -> int:
        """How often the jax forward was traced (compiled) so far; 0 on the other backends."""
        return getattr(self._forward, "traces", 0)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        check_input(images, self.input_size)
        if len(images) == 0:  # TensorFlow's BatchNorm rejects an empty batch
            return np.zeros((0, len(self.labels)), np.float32)
        out = np.asarray(self._forward(images), np.float32)
        return checked(softmax(out) if self._softmax else out, len(images), self.labels)
