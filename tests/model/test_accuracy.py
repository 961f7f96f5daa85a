"""The fast path keeps accuracy: JPEG draft, reducing-gap resize, TFLite vs the full-decode Keras path."""

from __future__ import annotations

import numpy as np
import pytest

from bench import accuracy
from bench.photos import jpeg
from tests.support.servers import ensure_model

pytestmark = pytest.mark.integration  # both runtimes over every test photo


def test_fast_path_agrees_with_the_reference_pipeline():
    result = accuracy.compare(str(ensure_model()))
    assert result.total >= 50
    originals = [d for d in result.disagreements if d.split(":")[0].endswith("/original")]
    assert originals == [], originals  # every test photo: the same top-1
    assert result.top1_rate >= 0.97, result.disagreements
    assert result.reference_in_top3 == result.total, result.disagreements


def test_int8_model_against_the_float_model():
    # Top 3 holds the target (the float top-1 always in it); top-1 is a floor just under the measured 227/240
    # (docs/performance.md), below the 97 % target, which is why int8 is opt-in (model_precision).
    result = accuracy.compare_int8(str(ensure_model()))
    assert result.total >= 200
    assert result.top1_rate >= 0.94, result.disagreements
    assert result.reference_in_top3 == result.total, result.disagreements


def test_the_int8_runtime_sees_a_cat_where_the_float_model_does():
    from services import imaging
    from services.config import ModelConfig, load
    from services.exporter.quantize import sample_photos
    from services.model.runtime import load_runtime

    settings = {"model_dir": str(ensure_model()), "model_runtime": "tflite"}
    cfg = load(ModelConfig, overrides=settings, environ={})
    photo = jpeg(sample_photos()["chelsea"])
    chelsea = np.asarray(imaging.load_rgb(photo, cfg.input_size, cfg.crop_fraction, cfg))[None]
    float_rt = load_runtime(cfg)
    int8_rt = load_runtime(load(ModelConfig, overrides={**settings, "model_precision": "int8"}, environ={}))
    expected = int(np.argmax(float_rt.predict_batch(chelsea)))
    top3 = np.argsort(int8_rt.predict_batch(chelsea)[0])[::-1][:3]
    # A cat either way, but not always the same cat: Egyptian cat and tiger cat are close on this photo, and
    # int8 can swap them (docs/performance.md).
    assert {float_rt.labels[expected], int8_rt.labels[top3[0]]} <= {"tabby", "tiger cat", "Egyptian cat"}
    assert expected in top3
