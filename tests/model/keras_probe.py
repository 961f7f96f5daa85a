"""`python -m tests.model.keras_probe MODEL_DIR INPUTS.npy OUT.npz`: the keras runtime on KERAS_BACKEND.

Run in a fresh interpreter per backend (Keras picks its backend once per process). Imports every module of
the model server first, loads and warms the runtime as the server does (max_batch_size 4, allowed 1,2,4),
then classifies the photos in INPUTS.npy one at a time and in batches of 1 to 6, counting JAX compilations
after the warm-up. Writes the outputs to OUT.npz and prints one JSON line of facts.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import pkgutil
import sys

import numpy as np

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
MODES = ("raw", "tf", "torch", "caffe")
compiles: collections.Counter[str] = collections.Counter()
if BACKEND == "jax":  # listening before anything compiles: the load's compilations prove it hears them
    import jax

    jax.monitoring.register_event_duration_secs_listener(lambda event, secs, **kw: compiles.update([event]))
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _normalise_error(images: np.ndarray) -> float:
    """The largest difference between the backend's normalisation and the host's, over every mode."""
    from keras import ops

    from services.model.keras_runtime import normalise
    from services.model.runtime import preprocess_into

    worst = 0.0
    for mode in MODES:
        host = np.empty(images.shape, np.float32)
        preprocess_into(images, mode, host)
        device = ops.convert_to_numpy(normalise(ops.convert_to_tensor(images), mode))
        worst = max(worst, float(np.abs(device - host).max()))
    return worst


def main(model_dir: str, inputs: str, out: str) -> None:
    import services.model

    for module in pkgutil.iter_modules(services.model.__path__, "services.model."):
        importlib.import_module(module.name)
    from services import config
    from services.model.runtime import load_runtime, warm_up

    settings = {"model_runtime": "keras", "model_dir": model_dir, "max_batch_size": 4}
    cfg = config.load(config.ModelConfig, settings | {"allowed_batch_sizes": "1,2,4"}, environ={})
    runtime = load_runtime(cfg)
    warm_up(runtime, cfg.batch_sizes())
    at_warm = compiles[COMPILE_EVENT]
    photos = np.load(inputs)
    singles = np.concatenate([runtime.predict_batch(photo[None]) for photo in photos])
    batches = {f"n{n}": runtime.predict_batch(photos[np.arange(n) % len(photos)]) for n in range(1, 7)}
    for _ in range(3 if BACKEND == "jax" else 0):  # under load: every size, again and again
        for n in range(1, 7):
            runtime.predict_batch(photos[np.arange(n) % len(photos)])
    np.savez(out, singles=singles, **batches)
    facts = {
        "backend": runtime.backend,
        "device": runtime.device,
        "traces": runtime.traces,
        "compiles_until_warm": at_warm,
        "compiles_after_warm": compiles[COMPILE_EVENT] - at_warm,
        "empty": list(runtime.predict_batch(photos[:0]).shape),
        "normalise_error": _normalise_error(photos),
        "tensorflow": sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))[:5],
    }
    print(json.dumps(facts))


if __name__ == "__main__":
    main(*sys.argv[1:4])
