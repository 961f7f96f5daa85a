"""The accepted upload formats: sniffed from the bytes, their headers checked before Pillow parses them.

JPEG and PNG headers are walked in imaging.py; this module adds WebP, AVIF, HEIC/HEIF (pillow-heif), GIF
(first frame), BMP and TIFF (first page), and what decoding each costs beyond the decoded image itself.

| upload | what a decode holds besides the decoded image (measured, 2000×1500 noise) |
|---|---|
| WebP | libwebp's two RGBA canvases (made on open) and a copy of the frame: ~14 bytes a pixel |
| AVIF, HEIC | the YUV planes, an RGB(A) buffer and its copy: ~8 (AVIF), ~7 (HEIC) bytes a pixel |
| GIF, BMP, TIFF | the file; an RLE BMP two more copies of the image (Pillow's Python decoder); TIFF a strip |

With the default 192 MiB `max_decode_bytes` that admits AVIF and HEIC up to ~13 Mpx (a phone's 12 Mpx
photo), WebP up to ~9.5 Mpx (not a 12 Mpx one), GIF and 8-bit BMP up to `max_image_pixels`, RGB BMP up to
~25 Mpx, TIFF up to ~18 Mpx uncompressed and ~40 Mpx compressed.
"""

from __future__ import annotations

import math
import struct

import pillow_heif
from PIL import Image

# Pillow's own format names, in the order users meet them; HEIF covers HEIC.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "HEIF", "GIF", "BMP", "TIFF")
ACCEPTED_PHRASE = "a JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP or TIFF photo"
ACCEPTED_TYPES = (
    "image/jpeg", "image/png", "image/webp", "image/avif", "image/heic", "image/heif", "image/gif",
    "image/bmp", "image/tiff",
)  # fmt: skip

# Thumbnails, depth maps and auxiliary images are never used: don't parse them. One decode thread: each
# request has its own thread already, and more would keep more tile decoders alive at once.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)  # fmt: skip
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
OTHER_MAGIC = (  # recognised only to name them in the error message
    (b"%PDF", "PDF"), (b"%!PS", "PostScript"), (b"8BPS", "Photoshop (PSD)"), (b"\x00\x00\x01\x00", "ICO"),
    (b"<svg", "SVG"), (b"<?xml", "XML or SVG"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"), (b"RIFF", "RIFF (not WebP)"),
)  # fmt: skip

# Per-pixel costs beyond the decoded image, with a margin over what was measured (see the table above).
_EXTRA_BYTES_PER_PIXEL = {"WEBP": 16, "AVIF": 10, "HEIF": 9}
# Pillow decodes RLE BMPs in Python, a few µs per run: a 20 MB file of one-pixel runs takes ~3 s.
BMP_MAX_RLE_BYTES = 4 * 1024 * 1024
_BMP_RLE = (1, 2)  # BI_RLE8, BI_RLE4
# Pillow turns each number in a TIFF directory into a Python object (~36 bytes, a fraction ~100): a 20 MB
# file of one long array would take ~200 MB at open. Real photos have < 100 tags and one offset and byte
# count per strip or tile (30,000 rows: 60,000 numbers).
_TIFF_MAX_TAGS = 1_000
_TIFF_MAX_NUMBERS = 262_144
_TIFF_MAX_VALUE_BYTES = 8 * 1024 * 1024  # metadata (XMP, ICC, IPTC) kept as bytes, as for JPEG
# bytes per value of each TIFF field type (BYTE ... DOUBLE, IFD, and BigTIFF's LONG8/SLONG8)
_TIFF_TYPE_BYTES = dict(zip(range(1, 14), (1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4), strict=True)) | {
    16: 8,
    17: 8,
}
_TIFF_BYTES_TYPES = (1, 2, 6, 7)  # BYTE, ASCII, SBYTE, UNDEFINED: kept as one bytes or str object


class HeaderError(ValueError):
    """A header that breaks this module's limits; imaging turns it into an ImageError (400)."""


def sniff(head: bytes) -> str | None:
    """The accepted format named by the leading bytes (Pillow's name), or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":  # ISO base media: the major brand, then the compatible ones
        end = min(len(head), struct.unpack_from(">I", head)[0])
        major, compatible = head[8:12], {head[i : i + 4] for i in range(16, end - 3, 4)}
        for brands, name in ((_AVIF_BRANDS, "AVIF"), (_HEIF_BRANDS, "HEIF")):
            if major in brands:
                return name
        for brands, name in ((_AVIF_BRANDS, "AVIF"), (_HEIF_BRANDS, "HEIF")):
            if compatible & brands:
                return name
    return None


def webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas a WebP declares; libwebp allocates it when Pillow opens the file, so check it first."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def check_bmp(data: bytes) -> None:
    """Refuse an RLE BMP too big for Pillow's Python decoder. :raise HeaderError: over the limit."""
    rle = len(data) >= 34 and struct.unpack_from("<I", data, 30)[0] in _BMP_RLE
    if rle and len(data) > BMP_MAX_RLE_BYTES:
        raise HeaderError(
            f"a run-length encoded BMP over {BMP_MAX_RLE_BYTES // 2**20} MiB; send an uncompressed BMP "
            "or a PNG"
        )


def check_tiff(data: bytes) -> None:
    """Walk the first directory's entries without reading their values. :raise HeaderError: over a limit."""
    order = "<" if data[:2] == b"II" else ">"
    pos = struct.unpack_from(order + "I", data, 4)[0] if len(data) >= 8 else 0
    if pos < 8 or pos + 2 > len(data):
        raise HeaderError("malformed TIFF: the first directory lies outside the file")
    count = struct.unpack_from(order + "H", data, pos)[0]
    if count > _TIFF_MAX_TAGS:
        raise HeaderError(f"malformed TIFF: more than {_TIFF_MAX_TAGS:,} tags in a directory")
    numbers = value_bytes = 0
    for entry in range(pos + 2, min(pos + 2 + 12 * count, len(data) - 11), 12):
        _, kind, values = struct.unpack_from(order + "HHI", data, entry)
        value_bytes += values * _TIFF_TYPE_BYTES.get(kind, 0)
        numbers += 0 if kind in _TIFF_BYTES_TYPES else values
    if numbers > _TIFF_MAX_NUMBERS or value_bytes > _TIFF_MAX_VALUE_BYTES:
        raise HeaderError(
            f"TIFF tags hold {numbers:,} numbers and {value_bytes:,} bytes, over the limits of "
            f"{_TIFF_MAX_NUMBERS:,} numbers and {_TIFF_MAX_VALUE_BYTES // 2**20} MiB"
        )


def _tiff_block_bytes(img: Image.Image) -> int:
    """The strip or tile buffer libtiff decodes into, from the first page's tags."""
    tags = img.tag_v2
    width, height = img.size
    bits = tags.get(258, (1,))
    row_bits = sum(bits if isinstance(bits, tuple) else (bits,)) or 8
    if tags.get(322) and tags.get(323):  # tiled
        return tags[322] * tags[323] * row_bits // 8 + 1
    rows = min(tags.get(278, height) or height, height)
    return rows * (width * row_bits + 7) // 8


def decode_overhead(img: Image.Image, fmt: str, upload_bytes: int) -> int:
    """Memory a decode takes beyond the decoded Pillow image, estimated from the header (JPEG, PNG: 0)."""
    width, height = img.size
    if fmt in _EXTRA_BYTES_PER_PIXEL:
        return width * height * _EXTRA_BYTES_PER_PIXEL[fmt] + 2 * upload_bytes  # the file read, twice
    if fmt == "TIFF":
        return upload_bytes + _tiff_block_bytes(img)
    if fmt == "BMP" and img.info.get("compression") in _BMP_RLE:
        return upload_bytes + 2 * width * height  # Pillow's bytearray of the indices and its copy
    if fmt in ("GIF", "BMP"):
        return upload_bytes
    return 0


def jpeg_coefficient_bytes(width: int, height: int, layers: list[tuple[int, int, int, int]]) -> int:
    """libjpeg's whole-image coefficient buffers: 64 × 2 bytes per 8×8 block, padded to whole MCUs.

    `layers` is Pillow's JpegImageFile.layer: (component id, horizontal, vertical sampling, table).
    """
    h_max = max((h for _, h, _, _ in layers), default=1)
    v_max = max((v for _, _, v, _ in layers), default=1)
    total = 0
    for _, h, v, _ in layers:
        blocks_x = math.ceil(math.ceil(width * h / h_max) / 8)
        blocks_y = math.ceil(math.ceil(height * v / v_max) / 8)
        total += math.ceil(blocks_x / h) * h * math.ceil(blocks_y / v) * v * 128
    return total
