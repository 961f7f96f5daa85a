"""Accuracy kept: zerolens's fast path (JPEG draft, reducing-gap resize, TFLite) against the reference float
pipeline (full decode, plain bicubic resize, the Keras runtime) on real photos and their variants; and the
int8 model (model_precision=int8) against the float one, both on the fast path.

`python -m bench.accuracy` prints both agreements; tests/model/test_accuracy.py holds them to the targets.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bench.photos import jpeg, sources
from services import imaging
from services.config import ModelConfig, load
from services.exporter.quantize import random_view
from services.model.runtime import Runtime, load_runtime

# The int8 model's evaluation photos: drawn with a seed other than the one its calibration photos were
# drawn with (services/exporter/quantize.py), so it is not judged on the images it was calibrated on.
EVALUATION_SEED = 1
EVALUATION_RANDOM_PER_PHOTO = 30  # on top of the 10 fixed variants: 6 photos × 40 = 240 images


def variants(img: Image.Image) -> dict[str, Image.Image]:
    """Crops, scales and rotations of one photo (10 per photo)."""
    w, h = img.size
    cw, ch = int(w * 0.7), int(h * 0.7)
    return {
        "original": img,
        "crop-tl": img.crop((0, 0, cw, ch)),
        "crop-br": img.crop((w - cw, h - ch, w, h)),
        "crop-centre": img.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2)),
        "scale-0.6": img.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.LANCZOS),
        "scale-3": img.resize((w * 3, h * 3), Image.Resampling.LANCZOS),
        "scale-6": img.resize((w * 6, h * 6), Image.Resampling.LANCZOS),
        "rotate-90": img.transpose(Image.Transpose.ROTATE_90),
        "rotate-8": img.rotate(8, resample=Image.Resampling.BICUBIC, expand=False),
        "mirror": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }


def reference_input(data: bytes, size: int, crop_fraction: float) -> np.ndarray:
    """Full decode (no draft), centre crop, plain bicubic resize: the float reference."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    box = imaging.centre_box(img.width, img.height, crop_fraction)
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box))


@dataclass(frozen=True)
class Agreement:
    total: int
    top1_same: int
    reference_in_top3: int
    disagreements: list[str]

    @property
    def top1_rate(self) -> float:
        return self.top1_same / self.total


def _predict(runtime: Runtime, inputs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [runtime.predict_batch(np.stack(inputs[i : i + 16])) for i in range(0, len(inputs), 16)]
    )


def _agreement(names: list[str], probs: np.ndarray, ref_probs: np.ndarray, labels: list[str]) -> Agreement:
    """How often the reference's top-1 is the top-1, and in the top 3, of `probs`."""
    same = in_top3 = 0
    disagreements = []
    for name, f, r in zip(names, probs, ref_probs, strict=True):
        ref_top = int(np.argmax(r))
        top3 = np.argsort(f)[::-1][:3]
        same += int(top3[0] == ref_top)
        in_top3 += int(ref_top in top3)
        if top3[0] != ref_top:
            disagreements.append(f"{name}: reference {labels[ref_top]}, zerolens {labels[top3[0]]}")
    return Agreement(len(names), same, in_top3, disagreements)


def evaluation_set() -> dict[str, bytes]:
    """The int8 evaluation photos as JPEGs: the fixed variants and EVALUATION_RANDOM_PER_PHOTO random crops
    (scales), flips and brightness changes of each photo."""
    rng = np.random.default_rng(EVALUATION_SEED)
    out = {}
    for photo, img in sources().items():
        for variant, image in variants(img).items():
            out[f"{photo}/{variant}"] = jpeg(image, quality=92)
        for i in range(EVALUATION_RANDOM_PER_PHOTO):
            out[f"{photo}/random-{i}"] = jpeg(random_view(img, rng), quality=92)
    return out


def compare_int8(model_dir: str) -> Agreement:
    """The int8 model against the float one (the reference), both through the model server's fast path."""
    settings = {"model_dir": model_dir, "model_runtime": "tflite"}
    cfg = load(ModelConfig, overrides=settings, environ={})
    float_rt = load_runtime(cfg)
    int8_rt = load_runtime(load(ModelConfig, overrides={**settings, "model_precision": "int8"}, environ={}))
    photos = evaluation_set()
    inputs = [
        np.asarray(imaging.load_rgb(data, cfg.input_size, cfg.crop_fraction, cfg)) for data in photos.values()
    ]
    return _agreement(list(photos), _predict(int8_rt, inputs), _predict(float_rt, inputs), float_rt.labels)


def compare(model_dir: str) -> Agreement:
    """Run every variant of every photo through both pipelines."""
    fast_cfg = load(ModelConfig, overrides={"model_dir": model_dir, "model_runtime": "tflite"}, environ={})
    ref_cfg = load(ModelConfig, overrides={"model_dir": model_dir, "model_runtime": "keras"}, environ={})
    fast, reference = load_runtime(fast_cfg), load_runtime(ref_cfg)
    names, fast_in, ref_in = [], [], []
    for photo, img in sources().items():
        for variant, image in variants(img).items():
            data = jpeg(image, quality=92)
            names.append(f"{photo}/{variant}")
            size, crop = fast_cfg.input_size, fast_cfg.crop_fraction
            fast_in.append(np.asarray(imaging.load_rgb(data, size, crop, fast_cfg)))
            ref_in.append(reference_input(data, size, crop))
    return _agreement(names, _predict(fast, fast_in), _predict(reference, ref_in), reference.labels)


def _report(title: str, result: Agreement) -> None:
    print(f"{title}: top-1 agreement {result.top1_same}/{result.total} ({result.top1_rate:.1%}); "
          f"reference top-1 in the top 3: {result.reference_in_top3}/{result.total}"
          f" ({result.reference_in_top3 / result.total:.1%})")  # fmt: skip
    print("\n".join(f"  {line}" for line in result.disagreements))


if __name__ == "__main__":
    from tests.support.servers import ensure_model

    model_dir = str(ensure_model())
    _report("fast path (TFLite) vs the Keras reference", compare(model_dir))
    _report("int8 vs float (both TFLite, fast path)", compare_int8(model_dir))
