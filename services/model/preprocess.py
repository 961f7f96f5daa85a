"""Upload bytes → the model's input array: (size, size, 3) uint8, decoded and checked by services.imaging."""

from __future__ import annotations

import numpy as np

from services import imaging
from services.config import ImageLimits

_LIMITS = ImageLimits()


def decode_image(
    data: bytes | memoryview,
    size: int,
    crop_fraction: float,
    max_pixels: int,
    max_side: int = _LIMITS.max_image_side,
    max_decode_bytes: int = _LIMITS.max_decode_bytes,
) -> np.ndarray:
    """Decode, centre-crop and resize one photo to uint8 (normalising is the runtime's job).

    :raise imaging.ImageError: for anything that is not a readable JPEG/PNG within the limits.
    """
    image = imaging.load_rgb(data, size, crop_fraction, max_pixels, max_side, max_decode_bytes)
    return np.asarray(image, dtype=np.uint8)
