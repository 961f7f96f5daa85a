"""The fast path keeps accuracy: JPEG draft, reducing-gap resize, TFLite vs the full-decode Keras path."""

from __future__ import annotations

import pytest

from bench import accuracy
from tests.support.servers import ensure_model

pytestmark = pytest.mark.integration  # both runtimes over every test photo


def test_fast_path_agrees_with_the_reference_pipeline():
    result = accuracy.compare(str(ensure_model()))
    assert result.total >= 50
    originals = [d for d in result.disagreements if d.split(":")[0].endswith("/original")]
    assert originals == [], originals  # every test photo: the same top-1
    assert result.top1_rate >= 0.97, result.disagreements
    assert result.reference_in_top3 == result.total, result.disagreements
