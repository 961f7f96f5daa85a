"""Baseline: the model inside the Flask/gunicorn worker, what most people write first (benchmark only).

Each gunicorn worker loads the TFLite runtime on its first request and decodes + classifies in the view,
with the same preprocessing and model as zerolens. Run with gunicorn `bench.baselines.inprocess:create_app()`.
"""

from __future__ import annotations

import os

import numpy as np

from services import imaging
from services.config import ModelConfig, load
from services.model.pipeline import top_k


def create_app():
    """A Flask app that classifies in-process."""
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    one_at_a_time = {"max_batch_size": 1, "allowed_batch_sizes": "1", "inference_workers": 1}
    cfg = load(ModelConfig, overrides=one_at_a_time)
    runtime = []  # loaded after gunicorn forks: one interpreter per worker process

    @app.post("/api/v1/predict")
    def predict():
        if not runtime:
            from services.model.runtime import load_runtime

            runtime.append(load_runtime(cfg))
        data = request.files["image"].read()
        try:
            image = imaging.load_rgb(data, cfg.input_size, cfg.crop_fraction, cfg)
        except imaging.ImageError as exc:
            return jsonify({"error": str(exc)}), 400
        probs = runtime[0].predict_batch(np.asarray(image)[None])[0]
        predictions = [p.__dict__ for p in top_k(probs, runtime[0].labels, 5)]
        return jsonify({"predictions": predictions, "pid": os.getpid()})

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app
