"""Upload bytes → the model's input array: (size, size, 3) uint8, decoded and checked by services.imaging."""

from __future__ import annotations

import numpy as np

from services import imaging
from services.config import ImageLimits


def decode_image(
    data: bytes | memoryview, size: int, crop_fraction: float, limits: ImageLimits = imaging.DEFAULT_LIMITS
) -> np.ndarray:
    """Decode, centre-crop and resize one photo to uint8 (normalising is the runtime's job).

    :raise imaging.ImageError: for anything that is not a readable photo of an accepted type within limits.
    """
    image = imaging.load_rgb(data, size, crop_fraction, limits)
    return np.asarray(image, dtype=np.uint8)
