"""Untrusted upload bytes → a checked, centre-cropped, resized RGB image (Pillow only; both tiers use it).

The web tier calls `open_image` (header only: cheap) to refuse bad uploads before they cross the network,
then `fit` on the image it opened; the model server calls `load_rgb` (both in one). Pillow's own defaults
are too loose for uploads: formats are pinned (no EPS/Ghostscript), the header's structure, sides and
pixel count are checked before Pillow parses or decodes anything, the memory a decode will take is
estimated from the header and refused over a budget, and truncated files are errors.

What a decode costs, and so what `max_decode_bytes` (192 MiB by default) admits; every decode also holds its
estimate in the process's budget (services/decode_budget.py), so threads cannot multiply it:

| upload | decoded | bytes per pixel | fits 192 MiB |
|---|---|---|---|
| baseline JPEG | at 1/2-1/8 scale (DCT scaling) | ~0.1 | any size within `max_image_pixels` |
| progressive (or multi-scan) JPEG | coefficients at full size | 3 (4:2:0), 6 (4:4:4) | any size, ≤ 32 Mpx |
| PNG: RGB, RGBA, grey + alpha | full size | 4 | ≤ 48 Mpx (8000×6000, not 7000×7000) |
| PNG: grey, palette / 16-bit grey | full size | 1 / 2 | any size within `max_image_pixels` |
| WebP, AVIF, HEIC, GIF, BMP, TIFF | full size (first frame or page) | see services/formats.py | |

Colour conversion, alpha compositing, cropping and the first (integer) reduction run a strip at a time, so
they add a few MB, not another copy of the image.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from services import decode_budget, formats
from services.config import ImageLimits

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, never a half-grey image
# Pillow's own bomb check only warns below ~179 Mpx; `open_image` enforces the configured limit on the header
# instead (opening is lazy, nothing is allocated before the check), so there is one limit, not two.
Image.MAX_IMAGE_PIXELS = None
# PNG text (tEXt/zTXt/iTXt) is never used here; Pillow inflates each chunk up to 1 MiB and keeps 64 MiB of
# it in all. 16 MiB still holds any real photo's XMP and stops a file of many small zTXt bombs sooner.
PngImagePlugin.MAX_TEXT_MEMORY = 16 * 1024 * 1024

DEFAULT_LIMITS = ImageLimits()
FORMATS = formats.ACCEPTED_FORMATS  # what both tiers decode; everything else is refused by type (415)
ACCEPTED_PHRASE = formats.ACCEPTED_PHRASE  # "a JPEG, PNG, ... photo", for messages
_BIT16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit greyscale PNGs: scale down, don't clip
_CONVERTIBLE = ("RGB", "L", "P", "1", "CMYK", "YCbCr", "RGBA", "LA", "PA", "RGBa", "La", "RGBX", "F", *_BIT16)
_ONE_BYTE = ("1", "L", "P")  # Pillow stores these at 1 byte a pixel, 16-bit grey at 2, everything else at 4
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
# Pillow walks a JPEG's header segments and a PNG's chunks in Python, a few µs each, and skips junk between
# JPEG segments a byte at a time: a 16 MB upload of empty segments or fill bytes holds a thread for seconds.
# Real files stay far below these (a camera JPEG has ~10 segments, a big extended XMP ~100; libpng writes
# one IDAT per 8 KiB, a row-per-IDAT encoder one per row).
_JPEG_MAX_SEGMENTS = 1_000
_JPEG_MAX_JUNK = 4_096  # bytes outside any segment (libjpeg and Pillow skip them)
# Pillow keeps every header segment (EXIF, XMP, ICC, ...) and joins the ICC parts again: ~2.5× their size.
# Real metadata stays under a few MB (a big ICC profile ~1 MB, a phone's extended XMP with a depth map ~3 MB).
_JPEG_MAX_HEADER = 8 * 1024 * 1024
_PNG_MAX_CHUNKS = 40_000
_JPEG_SOF = (0xC0, 0xC1, 0xC2, 0xC9, 0xCA)  # sequential and progressive, Huffman or arithmetic
_JPEG_SOF_OTHER = (0xC3, 0xC5, 0xC6, 0xC7, 0xCB, 0xCD, 0xCE, 0xCF)  # lossless, hierarchical: not scalable
_STRIP_BYTES = 1 << 20  # how much of the image `fit` converts at a time
_REDUCING_GAP = 3.0  # reduce by an integer factor first while ≥ 3× the output size is left (Pillow's resize)
_FULL_SCAN = "zerolens.full_coefficients"  # img.info key set by open_image: libjpeg buffers the whole image
_UPLOAD_BYTES = "zerolens.upload_bytes"  # img.info key set by open_image: the file's size
_FLOAT_RANGE = "zerolens.float_range"  # img.info key set by fit: a float image's (lowest, highest) value
_ORIENTED = ("WEBP", "AVIF", "TIFF")  # besides JPEG; libheif applies a HEIC's rotation itself


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
    return formats.sniff(bytes(data[:256]))


def _jpeg_full_coefficients(data: bytes) -> bool:
    """Walk the JPEG header to the first scan; True when libjpeg will buffer every DCT coefficient.

    libjpeg decodes a frame in one pass, at any DCT scale, only when it is sequential and its first scan
    holds every component; progressive and multi-scan files keep the whole image's coefficients.

    :raise ImageError: too many segments, too much junk or metadata, a lossless or hierarchical frame.
    """
    pos, end, segments, junk = 2, len(data), 0, 0
    frame_components, progressive = 0, False
    while pos + 4 <= end:
        if pos > _JPEG_MAX_HEADER:
            raise ImageError(
                f"JPEG metadata (EXIF, XMP, ICC profile, ...) over the {_JPEG_MAX_HEADER // 2**20} MiB limit"
            )
        if data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF):  # junk, a stuffed 0xFF, a fill byte
            found = data.find(b"\xff", pos + 1)
            step = (found if found > 0 else end) - pos
            junk += step
            if junk > _JPEG_MAX_JUNK:
                raise ImageError(f"malformed JPEG: more than {_JPEG_MAX_JUNK:,} bytes outside any segment")
            pos += step
            continue
        marker = data[pos + 1]
        segments += 1
        if segments > _JPEG_MAX_SEGMENTS:
            raise ImageError(f"malformed JPEG: more than {_JPEG_MAX_SEGMENTS:,} header segments")
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length: TEM, RSTn, SOI
            pos += 2
            continue
        if marker < 0xC0 or marker == 0xD9:  # not a header marker: Pillow reports it
            return progressive
        if marker in _JPEG_SOF_OTHER:
            raise ImageError("unsupported JPEG: lossless or hierarchical coding; send a baseline JPEG")
        if marker in _JPEG_SOF and pos + 9 < end:
            frame_components, progressive = data[pos + 9], marker in (0xC2, 0xCA)
        elif marker == 0xDA:
            return progressive or data[pos + 4] < frame_components
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return progressive


def _png_check_chunks(data: bytes) -> None:
    """Count the PNG's chunks without reading them. :raise ImageError: too many."""
    pos, end, chunks = 8, len(data), 0
    while pos + 8 <= end:
        chunks += 1
        if chunks > _PNG_MAX_CHUNKS:
            raise ImageError(f"malformed PNG: more than {_PNG_MAX_CHUNKS:,} chunks")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            return
        pos += 12 + length


def open_image(
    data: bytes | memoryview, max_pixels: int, max_side: int = DEFAULT_LIMITS.max_image_side
) -> Image.Image:
    """The upload opened lazily, its structure, type, size and mode checked from the header (no decoding).

    :raise ImageError: empty, not an accepted type, malformed header, unreadable header, a side over
        `max_side`, too many pixels, unsupported mode.
    """
    if len(data) == 0:
        raise ImageError("the upload is empty")
    fmt = sniff(data)
    if fmt is None:
        head = bytes(data[:16])
        other = next((name for magic, name in formats.OTHER_MAGIC if head.startswith(magic)), None)
        article = "an" if other and other[0] in "AEIOU" else "a"
        kind = f"{article} {other} file" if other else "not an image of an accepted type"
        raise ImageError(f"unsupported file type: {kind}; upload {ACCEPTED_PHRASE}", unsupported=True)
    raw = data if isinstance(data, bytes) else bytes(data)
    full_coefficients = _check_header(raw, fmt, max_pixels, max_side)
    try:
        img = Image.open(io.BytesIO(raw), formats=[fmt])
    except UnidentifiedImageError:  # Pillow's message names its file object ("<_io.BytesIO object at 0x…>")
        raise ImageError(f"cannot read {fmt} image: the file is truncated or damaged") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot read {fmt} image: {exc}") from None
    _check_size(*img.size, max_pixels, max_side)
    if img.mode not in _CONVERTIBLE:
        raise ImageError(f"unsupported image mode {img.mode!r}")
    if full_coefficients or img.info.get("progressive"):
        img.info[_FULL_SCAN] = True
    img.info[_UPLOAD_BYTES] = len(raw)
    return img


def _check_size(width: int, height: int, max_pixels: int, max_side: int) -> None:
    if max(width, height) > max_side:
        raise ImageError(f"image is {width:,}×{height:,} pixels, a side over the {max_side:,} pixel limit")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}×{height} = {width * height:,} pixels, over the {max_pixels:,} limit"
        )
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")


def _check_header(raw: bytes, fmt: str, max_pixels: int, max_side: int) -> bool:
    """The checks due before Pillow parses the header; True for a JPEG whose coefficients libjpeg buffers.

    :raise ImageError: a header over a structural limit, a WebP canvas over the size limits.
    """
    if fmt == "JPEG":
        return _jpeg_full_coefficients(raw)
    try:
        if fmt == "PNG":
            _png_check_chunks(raw)
        elif fmt == "TIFF":
            formats.check_tiff(raw)
        elif fmt == "BMP":
            formats.check_bmp(raw)
    except formats.HeaderError as exc:
        raise ImageError(str(exc)) from None
    if fmt == "WEBP" and (canvas := formats.webp_size(raw)):
        _check_size(*canvas, max_pixels, max_side)  # libwebp allocates the canvas as Pillow opens the file
    return False


def describe(img: Image.Image) -> ImageInfo:
    # A JPEG with a Multi-Picture index (e.g. a phone's HDR gain map) opens as Pillow's "MPO": still a JPEG.
    fmt = "JPEG" if isinstance(img, JpegImagePlugin.JpegImageFile) else img.format or ""
    return ImageInfo(format=fmt, width=img.size[0], height=img.size[1], mode=img.mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _BIT16:
        # 16-bit greyscale: convert("L") would clip everything above 255 to white.
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if img.mode == "F":
        # Floats have no fixed range (0..1, 0..255, or measurements): stretch the whole image's to 0..255.
        low, high = img.info.get(_FLOAT_RANGE, (0.0, 1.0))
        scale = 255 / (high - low) if high > low else 0.0
        return img.point(lambda v: v * scale - low * scale).convert("L").convert("RGB")
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


@dataclass(frozen=True)
class _Plan:
    """How `fit` turns a decoded image into the output: region read, integer reduction, final box."""

    region: tuple[int, int, int, int]  # the crop plus the bicubic filter's reach, in whole pixels
    factor: int  # integer reduction applied strip by strip (1: none)
    box: tuple[float, float, float, float]  # the crop within the reduced region


def _plan(width: int, height: int, size: int, crop_fraction: float) -> _Plan:
    # The steps of Pillow's resize(..., box, reducing_gap=3.0) on the whole RGB image: the same pixels when
    # reduced, within a level or two of rounding when not.
    box = centre_box(width, height, crop_fraction)
    scale = (box[2] - box[0]) / size
    factor = int(scale / _REDUCING_GAP) or 1
    # Reduced: Pillow's own reduce box (bicubic support less half a pixel); not: the window's whole reach.
    reach = 1.5 * scale if factor > 1 else 2 * max(scale, 1.0) + 1
    region = (
        max(0, int(box[0] - reach)),
        max(0, int(box[1] - reach)),
        min(width, math.ceil(box[2] + reach)),
        min(height, math.ceil(box[3] + reach)),
    )
    x0, y0 = region[:2]
    inner = ((box[0] - x0) / factor, (box[1] - y0) / factor, (box[2] - x0) / factor, (box[3] - y0) / factor)
    return _Plan(region, factor, inner)


def _bytes_per_pixel(mode: str) -> int:
    return 1 if mode in _ONE_BYTE else 2 if mode in _BIT16[:4] else 4


def _image_bytes(width: int, height: int, mode: str) -> int:
    return height * (width * _bytes_per_pixel(mode) + 8)  # Pillow keeps a pointer per row


def decode_bytes(img: Image.Image, size: int, crop_fraction: float, full_size: tuple[int, int]) -> int:
    """Memory `fit` will allocate for `img` (after any JPEG draft), estimated from the header.

    `full_size` is the size before draft: what libjpeg's coefficient buffers and row buffers follow.
    """
    width, height = img.size
    total = _image_bytes(width, height, img.mode)
    if isinstance(img, JpegImagePlugin.JpegImageFile):
        total += full_size[0] * 64  # libjpeg's MCU-row and upsampling buffers
        if img.info.get(_FULL_SCAN):
            total += formats.jpeg_coefficient_bytes(*full_size, img.layer)
    elif img.format == "PNG":
        total += 2 * 8 * width + 64  # PNG: this row and the previous one, up to 16-bit RGBA
    else:
        total += formats.decode_overhead(img, img.format or "", img.info.get(_UPLOAD_BYTES, 0))
    plan = _plan(width, height, size, crop_fraction)
    region_w = plan.region[2] - plan.region[0]
    region_h = plan.region[3] - plan.region[1]
    reduced = _image_bytes(math.ceil(region_w / plan.factor), math.ceil(region_h / plan.factor), "RGB")
    return total + reduced + 6 * _STRIP_BYTES  # a strip in several modes at once (16-bit grey, alpha)


def _refuse_over_budget(img: Image.Image, need: int, budget: int, full_size: tuple[int, int]) -> None:
    width, height = full_size
    mib = 1024 * 1024
    if isinstance(img, JpegImagePlugin.JpegImageFile):
        kind, advice = "progressive or multi-scan JPEG", "save it as a baseline (non-progressive) JPEG"
    else:
        per_pixel = _bytes_per_pixel(img.mode) if img.format == "PNG" else need / (width * height)
        most = budget / (per_pixel * 1e6)
        kind = {"HEIF": "HEIC/HEIF", "WEBP": "WebP"}.get(img.format or "", img.format or "image")
        advice = f"a {kind} like this one may have up to about {most:.0f} megapixels; send a JPEG"
    raise ImageError(
        f"decoding this {width:,}×{height:,} {kind} would take about {need / mib:,.0f} MiB, over the "
        f"{budget / mib:,.0f} MiB limit per image; {advice} or a smaller image"
    )


def _reduce_region(img: Image.Image, plan: _Plan) -> Image.Image:
    """The region of a decoded image as RGB, reduced by plan.factor, converted a strip at a time."""
    x0, y0, x1, y1 = plan.region
    f = plan.factor
    if f == 1:
        return _to_rgb(img.crop(plan.region))
    rows = max(1, _STRIP_BYTES // ((x1 - x0) * 4 * f)) * f  # whole blocks of f rows: strips reduce exactly
    out = Image.new("RGB", (math.ceil((x1 - x0) / f), math.ceil((y1 - y0) / f)))
    for top in range(y0, y1, rows):
        strip = _to_rgb(img.crop((x0, top, x1, min(top + rows, y1))))
        out.paste(strip.reduce(f), (0, (top - y0) // f))
    return out


def load_rgb(
    data: bytes | memoryview, size: int, crop_fraction: float, limits: ImageLimits = DEFAULT_LIMITS
) -> Image.Image:
    """Open and check the upload (open_image), then `fit` it to the model's input, within `limits`.

    :raise ImageError: everything `open_image` and `fit` refuse.
    """
    img = open_image(data, limits.max_image_pixels, limits.max_image_side)
    return fit(img, size, crop_fraction, limits.max_decode_bytes)


def fit(
    img: Image.Image, size: int, crop_fraction: float, max_decode_bytes: int = DEFAULT_LIMITS.max_decode_bytes
) -> Image.Image:
    """Decode an opened image, centre-crop and resize to size×size RGB (bicubic), honouring EXIF orientation.

    JPEGs are decoded at the smallest DCT scale that still leaves the crop at least `size` pixels wide
    (Pillow draft), which is several times faster for big photos and loses nothing at the output size.
    Before decoding, the memory the decode will take is estimated (`decode_bytes`), checked against
    `max_decode_bytes` and the process's whole decode budget, and held in that budget while it runs.

    :raise ImageError: the decode would take more than `max_decode_bytes` or the whole budget; truncated or
        corrupt pixel data.
    :raise decode_budget.DecodeBusy: other decodes kept the budget full for DECODE_WAIT_S (overload).
    `img` is closed afterwards (its size, mode and info stay): only the small result is kept.
    """
    full_size = img.size
    is_jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)
    try:
        oriented = is_jpeg or img.format in _ORIENTED
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if oriented else 1
        if is_jpeg:
            need = math.ceil(size / crop_fraction)
            img.draft("RGB", (need, need))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    need_bytes = decode_bytes(img, size, crop_fraction, full_size)
    limit = min(max_decode_bytes, decode_budget.total() or max_decode_bytes)  # more could never be held
    if need_bytes > limit:
        _refuse_over_budget(img, need_bytes, limit, full_size)
    try:
        with decode_budget.hold(need_bytes):
            try:
                img.load()
                if img.mode == "F":
                    img.info[_FLOAT_RANGE] = img.getextrema()  # each strip is scaled alike (_to_rgb)
                plan = _plan(img.size[0], img.size[1], size, crop_fraction)
                region = _reduce_region(img, plan)
                out = region.resize((size, size), Image.Resampling.BICUBIC, box=plan.box)
            finally:
                img.close()  # its pixels go with the reservation, not when the caller lets go of `img`
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    # A centred square crop commutes with rotation, so orientation is applied to the small result.
    transpose = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return out.transpose(transpose) if transpose is not None else out
