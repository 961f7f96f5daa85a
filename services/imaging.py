"""Untrusted upload bytes → a checked, centre-cropped, resized RGB image (Pillow only; both tiers use it).

The web tier calls `open_image` (header only: cheap) to refuse bad uploads before they cross the network,
then `fit` on the image it opened; the model server calls `load_rgb` (both in one). Pillow's own defaults
are too loose for uploads: formats are pinned (no EPS/Ghostscript), the pixel count is checked before any
decoding, and truncated files are errors.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, never a half-grey image
# Pillow's own bomb check only warns below ~179 Mpx; `open_image` enforces the configured limit on the header
# instead (opening is lazy, nothing is allocated before the check), so there is one limit, not two.
Image.MAX_IMAGE_PIXELS = None

FORMATS = ("JPEG", "PNG")  # what the model server decodes; everything else is refused by type
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))
_OTHER_MAGIC = (  # recognised only to name them in the error message
    (b"GIF8", "GIF"), (b"RIFF", "WebP/RIFF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"), (b"%!PS", "PostScript"),
)  # fmt: skip
_BIT16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit greyscale PNGs: scale down, don't clip
_CONVERTIBLE = ("RGB", "L", "P", "1", "CMYK", "YCbCr", "RGBA", "LA", "PA", "RGBa", "La", *_BIT16)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """An upload that cannot be classified; `unsupported`: a wrong type (HTTP 415), not a bad image (400)."""

    def __init__(self, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


def sniff(data: bytes | memoryview) -> str | None:
    """The image format named by the leading bytes, or None; the file name and content type are ignored."""
    head = bytes(data[:16])
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def open_image(data: bytes | memoryview, max_pixels: int) -> Image.Image:
    """The upload opened lazily, its type, size and mode checked from the header (no pixel decoding).

    :raise ImageError: empty, not JPEG/PNG, unreadable header, too many pixels, unsupported mode.
    """
    if len(data) == 0:
        raise ImageError("the upload is empty")
    fmt = sniff(data)
    if fmt is None:
        head = bytes(data[:16])
        other = next((name for magic, name in _OTHER_MAGIC if head.startswith(magic)), None)
        kind = f"a {other} file" if other else "not a JPEG or PNG image"
        raise ImageError(f"unsupported file type: {kind}; upload a JPEG or PNG photo", unsupported=True)
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read {fmt} image: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}×{height} = {width * height:,} pixels, over the {max_pixels:,} limit"
        )
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    if img.mode not in _CONVERTIBLE:
        raise ImageError(f"unsupported image mode {img.mode!r}")
    return img


def describe(img: Image.Image) -> ImageInfo:
    return ImageInfo(format=img.format or "", width=img.size[0], height=img.size[1], mode=img.mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _BIT16:
        # 16-bit greyscale: convert("L") would clip everything above 255 to white.
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels often hide black or junk colour: composite onto white, as a viewer shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def centre_box(width: int, height: int, crop_fraction: float) -> tuple[float, float, float, float]:
    """The centred square (left, top, right, bottom) covering crop_fraction of the shorter side."""
    side = min(width, height) * crop_fraction
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def load_rgb(data: bytes | memoryview, size: int, crop_fraction: float, max_pixels: int) -> Image.Image:
    """Open and check the upload (open_image), then `fit` it to the model's input.

    :raise ImageError: everything `open_image` refuses, plus truncated or corrupt pixel data.
    """
    return fit(open_image(data, max_pixels), size, crop_fraction)


def fit(img: Image.Image, size: int, crop_fraction: float) -> Image.Image:
    """Decode an opened image, centre-crop and resize to size×size RGB (bicubic), honouring EXIF orientation.

    JPEGs are decoded at the smallest DCT scale that still leaves the crop at least `size` pixels wide
    (Pillow draft), which is several times faster for big photos and loses nothing at the output size.

    :raise ImageError: truncated or corrupt pixel data.
    """
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if img.format == "JPEG" else 1
        if img.format == "JPEG":
            need = math.ceil(size / crop_fraction)
            img.draft("RGB", (need, need))
        img.load()
        rgb = _to_rgb(img)
        box = centre_box(rgb.size[0], rgb.size[1], crop_fraction)
        out = rgb.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    # A centred square crop commutes with rotation, so orientation is applied to the small result.
    transpose = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return out.transpose(transpose) if transpose is not None else out
