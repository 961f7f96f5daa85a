"""What goes into and comes out of every model runtime (TFLite, Keras on any backend): the pixels'
normalisation, and the checks on a batch and on the model's output. No model library is imported here.
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


class ModelError(RuntimeError):
    """Artifacts missing, altered, unloadable or at odds with the settings, or output of the wrong shape."""


def preprocess_into(images: np.ndarray, mode: str, out: np.ndarray) -> None:
    """Write `images` (uint8 RGB) normalised per `mode` into `out` (float32), without temporaries."""
    np.copyto(out, images[..., ::-1] if mode == "caffe" else images, casting="unsafe")  # one cast pass
    if mode == "tf":  # [-1, 1]
        out *= 1 / 127.5
        out -= 1.0
    elif mode == "torch":  # ImageNet mean/std on [0, 1]
        out *= 1 / 255
        out -= IMAGENET_MEAN
        out /= IMAGENET_STD
    elif mode == "caffe":  # BGR minus the ImageNet channel means
        out -= CAFFE_MEAN_BGR
    elif mode != "raw":
        raise ValueError(f"unknown preprocessing {mode!r}")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def is_probabilities(out: np.ndarray) -> bool:
    return bool((out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def check_input(images: np.ndarray, size: int) -> None:
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"expected (N, {size}, {size}, 3) uint8 images, got {images.shape} {images.dtype}")


def checked(out: np.ndarray, n: int, labels: list[str]) -> np.ndarray:
    if out.shape != (n, len(labels)):
        raise ModelError(f"model output shape {out.shape}, expected {(n, len(labels))}")
    return out
