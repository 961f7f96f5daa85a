"""CPU cost per image of the float, full-int8 and dynamic-range TFLite models.

`python -m bench.precision [--rounds 7]`: single-threaded invoke core-ms per image (thread CPU time of the
invoking thread, which with one thread is where XNNPACK runs) at batch 1 and 4, each model opened as the
model server opens it. The rounds alternate the models (float, int8, dynamic range, float, …), so drift of a
shared machine falls on all three alike; the median over the rounds is printed. The dynamic-range model
(int8 weights, float activations) is not shipped: it is converted here, from model.keras, for comparison.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.model.runtime import open_interpreter

BATCHES = (1, 4)


def dynamic_range_model(model_dir: Path, out: Path) -> Path:
    """model.keras converted with dynamic-range quantization into `out`."""
    import keras

    from services.exporter.quantize import to_dynamic_range

    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    model.export(out / "saved_model", format="tf_saved_model", verbose=False)
    path = out / "model_dynamic_range.tflite"
    path.write_bytes(to_dynamic_range(out / "saved_model"))
    return path


def _invoke_ms(interpreter: Any, batch: int, invokes: int) -> float:
    started = time.thread_time_ns()
    for _ in range(invokes):
        interpreter.invoke()
    return (time.thread_time_ns() - started) / 1e6 / invokes / batch


def measure(models: dict[str, Path], rounds: int, invokes: int = 24) -> dict[tuple[str, int], list[float]]:
    """core-ms per image for each (model, batch), one sample per round."""
    rng = np.random.default_rng(0)
    interpreters = {}
    for name, path in models.items():
        for batch in BATCHES:
            interpreter = open_interpreter(path, threads=1, batch=batch)
            details = interpreter.get_input_details()[0]
            pixels = rng.integers(0, 256, (batch, *details["shape"][1:]), dtype=np.uint8)
            interpreter.set_tensor(details["index"], pixels.astype(details["dtype"]))
            interpreter.invoke()  # first invoke: XNNPACK's own set-up, not counted
            interpreters[name, batch] = interpreter
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in interpreters}
    for _ in range(rounds):
        for batch in BATCHES:
            for name in models:
                samples[name, batch].append(_invoke_ms(interpreters[name, batch], batch, invokes // batch))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="build/models/efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compare", type=Path, action="append", default=[], help="another .tflite to time")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model_dir = Path(args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "float": model_dir / "model.tflite",
            "int8": model_dir / "model_int8.tflite",
            "dynamic-range": dynamic_range_model(model_dir, Path(tmp)),
            **{f"{path.parent.name}/{path.stem}"[-14:]: path for path in args.compare},
        }
        samples = measure(models, args.rounds)
    print(f"core-ms per image, 1 thread, XNNPACK; median (min–max) of {args.rounds} alternating rounds")
    for (name, batch), values in samples.items():
        print(f"  {name:14} batch {batch}: {np.median(values):6.2f}  ({min(values):.2f}–{max(values):.2f})")


if __name__ == "__main__":
    main()
