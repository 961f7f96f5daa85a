"""Model runtimes for tests that are about the server around the model, not the model."""

from __future__ import annotations

import numpy as np


class UniformRuntime:
    """Answers at once, every class equally likely."""

    name = "fake"

    def __init__(self, classes: int = 10) -> None:
        self.labels = [f"class-{i}" for i in range(classes)]

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        return np.full((len(images), len(self.labels)), 1 / len(self.labels), dtype=np.float32)
