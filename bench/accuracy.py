"""Accuracy kept: zerolens's fast path (JPEG draft, reducing-gap resize, TFLite) against the reference float
pipeline (full decode, plain bicubic resize, the Keras runtime) on real photos and their variants.

`python -m bench.accuracy` prints the agreement; tests/model/test_accuracy.py holds it to the targets.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bench.photos import jpeg, sources
from services import imaging
from services.config import ModelConfig, load
from services.model.runtime import load_runtime


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
    fast_probs = np.concatenate(
        [fast.predict_batch(np.stack(fast_in[i : i + 16])) for i in range(0, len(names), 16)]
    )
    ref_probs = np.concatenate(
        [reference.predict_batch(np.stack(ref_in[i : i + 16])) for i in range(0, len(names), 16)]
    )
    same = in_top3 = 0
    disagreements = []
    for name, f, r in zip(names, fast_probs, ref_probs, strict=True):
        ref_top = int(np.argmax(r))
        top3 = np.argsort(f)[::-1][:3]
        same += int(top3[0] == ref_top)
        in_top3 += int(ref_top in top3)
        if top3[0] != ref_top:
            disagreements.append(
                f"{name}: reference {reference.labels[ref_top]}, zerolens {fast.labels[top3[0]]}"
            )
    return Agreement(len(names), same, in_top3, disagreements)


if __name__ == "__main__":
    from tests.support.servers import ensure_model

    result = compare(str(ensure_model()))
    print(f"top-1 agreement {result.top1_same}/{result.total} ({result.top1_rate:.1%}); "
          f"reference top-1 in zerolens top-3: {result.reference_in_top3}/{result.total}")  # fmt: skip
    print("\n".join(result.disagreements))
