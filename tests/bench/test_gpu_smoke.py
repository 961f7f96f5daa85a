"""A tiny `python -m bench.gpu` run on the CPU: the model alone and the model server (no speed asserted)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from bench import gpu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed"),
]


def test_gpu_bench_runs_end_to_end_on_the_cpu(tmp_path):
    argv = ["--backend", "jax", "--batch-sizes", "1,2,4", "--duration", "3", "--clients", "2"]
    backend_before = os.environ.get("KERAS_BACKEND")
    out = gpu.main([*argv, "--out", str(tmp_path)])
    assert os.environ.get("KERAS_BACKEND") == backend_before  # Keras loaded later here keeps its backend
    assert out.name.endswith("-gpu")
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "jax" and results["target"] == 0.9
    raw = results["raw"]
    assert raw["device"] and {"keras", "jax", "numpy"} <= set(raw["versions"])
    assert raw["streams"] == 2  # as many as the model server's inference_workers
    assert [lv["batch_size"] for lv in raw["levels"]] == [1, 2, 4]
    assert all(lv["calls"] > 0 and lv["images_per_s"] > 0 and lv["batch_ms_p50"] > 0 for lv in raw["levels"])
    served = results["served"]
    assert served["ok"] > 0 and served["errors"] == {}, served
    assert served["in_flight"] == 16 and served["settings"]["max_batch_size"] == "4"
    assert served["settings"]["allowed_batch_sizes"] == "1,2,4"
    assert 1 <= served["mean_batch_size"] <= 4
    assert served["latency_ms_p50"] <= served["latency_ms_p99"] and served["server_core_ms_per_image"] > 0
    best = max(raw["levels"], key=lambda lv: lv["images_per_s"])
    assert results["best_batch_size"] == best["batch_size"]
    assert results["ratio"] == pytest.approx(served["images_per_s"] / best["images_per_s"])
    table = (out / "results.md").read_text()
    assert "| batch size | images/s |" in table and "(b) / best of (a)" in table and "target 0.9" in table
    assert "serving efficientnet_lite0" in (out / "model-server.log").read_text()
    assert not any(out.glob("**/*.secret"))  # the CurveZMQ keys stay out of the results
