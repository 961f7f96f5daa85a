"""What every peer server runs per image and per batch: zerolens's decode and its LiteRT interpreter setup.

Imported inside the peers' own virtualenvs (Pillow, numpy and ai-edge-litert only), with the checkout's root
on sys.path, so the peers decode and run the model exactly as zerolens's model server does, and no more.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from services import imaging  # noqa: E402
from services.model.runtime import open_interpreter  # noqa: E402

MODEL_DIR = Path(os.environ.get("PEER_MODEL_DIR", ROOT / "build" / "models" / "efficientnet_lite0"))
INPUT_SIZE = 224  # ModelConfig.input_size
CROP_FRACTION = 0.875  # ModelConfig.crop_fraction
MAX_BATCH = 4  # zerolens's max_batch_size: on this CPU the cost per image rises with the batch
TOP_K = 5


def decode(data: bytes) -> np.ndarray:
    """Upload bytes → (224, 224, 3) uint8: Pillow draft, centre crop 0.875, bicubic (services.imaging)."""
    return np.asarray(imaging.load_rgb(data, INPUT_SIZE, CROP_FRACTION), dtype=np.uint8)


class Classifier:
    """One single-threaded interpreter per batch size 1..MAX_BATCH (not thread-safe: one per worker).

    An interpreter per size avoids resizing tensors per call; the model normalises inside its graph
    (preprocessing "raw"), so a batch only needs the uint8 → float32 cast.
    """

    def __init__(self, threads: int = 1) -> None:
        path = MODEL_DIR / "model.tflite"
        self._interpreters = {n: open_interpreter(path, threads, n) for n in range(1, MAX_BATCH + 1)}
        self.labels: list[str] = json.loads((MODEL_DIR / "labels.json").read_text())

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) uint8 → (N, classes) float32; batches above MAX_BATCH run in chunks."""
        return np.concatenate(
            [self._run(images[i : i + MAX_BATCH]) for i in range(0, len(images), MAX_BATCH)]
        )

    def _run(self, images: np.ndarray) -> np.ndarray:
        interpreter: Any = self._interpreters[len(images)]
        buffer = interpreter.tensor(interpreter.get_input_details()[0]["index"])()
        np.copyto(buffer, images, casting="unsafe")
        del buffer  # invoke refuses to run while a view of its buffers is alive
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    def top_k(self, probabilities: np.ndarray) -> list[dict[str, float | str]]:
        """The TOP_K classes of one image, as zerolens's API lists them."""
        best = np.argsort(probabilities)[::-1][:TOP_K]
        return [{"label": self.labels[i], "score": round(float(probabilities[i]), 6)} for i in best]
