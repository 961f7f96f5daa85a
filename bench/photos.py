"""The benchmark's photo set: real photos (scikit-image, scikit-learn) as JPEGs of ~0.3 to ~5 megapixels.

The sample photos are 0.2–0.3 Mpx, smaller than what phones upload, so each is also resized (Lanczos) to
1, 2 and 5 Mpx: JPEG decode cost grows with the pixel count, and that is the cost the server must hide.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

from services.exporter.quantize import sample_photos

MEGAPIXELS = (None, 1.0, 2.0, 5.0)  # None: the photo's own size


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def sources() -> dict[str, Image.Image]:
    """The real photos this benchmark (and the accuracy check) starts from: those that calibrate the int8
    model, from scikit-image and scikit-learn."""
    return sample_photos()


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo_set(megapixels: tuple[float | None, ...] = MEGAPIXELS) -> list[Photo]:
    """Every source photo at every size, as JPEG bytes."""
    out = []
    for name, img in sources().items():
        for mp in megapixels:
            sized = img
            if mp is not None:
                scale = math.sqrt(mp * 1e6 / (img.width * img.height))
                sized = img.resize(
                    (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
                )
            label = f"{name}@{mp:g}MP" if mp is not None else name
            out.append(Photo(label, jpeg(sized), sized.width, sized.height))
    return out
