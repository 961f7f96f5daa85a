"""The hostile images the drills upload, each with the answer the API must give: bombs by area and by one
side, progressive JPEGs, huge EXIF/ICC blocks, PNG text bombs, malformed headers, every other format named
.jpg, and big but legitimate photos (a 10,000-frame GIF, phones' 12 Mpx HEIC, AVIF and WebP)."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

from services import formats  # noqa: F401  (registers pillow-heif: HEIC files are made here too)
from tests.conftest import bomb_png


@dataclass(frozen=True)
class Hostile:
    data: bytes
    status: int  # what the API answers: 400 bad image, 415 not an accepted type, 200 classified
    why: str


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, row: bytes, colour_type: int = 2, before_idat: bytes = b"") -> bytes:
    """A PNG of `height` copies of `row` (filter byte included), compressed as a stream: cheap to build."""
    z = zlib.compressobj(6)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + before_idat
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def _thin_png(width: int, height: int) -> bytes:
    """A width × height RGB PNG of zeros, compressed from a repeated block (a 49 Mpx line is ~50 kB)."""
    raw = height * (1 + 3 * width)
    z = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = [z.compress(block) for _ in range(raw >> 20)]
    parts += [z.compress(bytes(raw & ((1 << 20) - 1))), z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def _gif_frames(frames: int) -> bytes:
    one = encode(Image.new("P", (64, 64), 1), "GIF")
    start = one.index(b",")  # the first image descriptor
    control = b"!\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension: 10 ms per frame
    return one[:start] + (control + one[start:-1]) * frames + b";"


def _other_formats(small: Image.Image) -> dict[str, Hostile]:
    """Bombs and big photos in the formats beyond JPEG and PNG."""
    webp = bytearray(encode(small, "WEBP", exif=b"Exif\0\0II*\0" + bytes(8)))
    webp[24:30] = (16_383 - 1).to_bytes(3, "little") * 2  # the VP8X canvas: 268 Mpx
    gif = bytearray(encode(small.convert("P"), "GIF"))
    struct.pack_into("<HH", gif, 6, 65_535, 65_535)  # the logical screen; the frame stays 640×480
    wide_gif = bytearray(gif)
    struct.pack_into("<HH", wide_gif, 6, 7_000, 7_000)  # 49 Mpx of screen, one small frame: classified
    bmp = bytearray(encode(small, "BMP"))
    struct.pack_into("<ii", bmp, 18, 7_000, 7_000)  # 49 Mpx declared, 0.9 MB of pixels: truncated
    ifd = struct.pack("<HHHII", 1, 273, 4, 4_000_000, 26)  # one tag of 4,000,000 strip offsets
    tiff_tags = b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(4) + bytes(16_000_000)
    grey = Image.new("RGB", (4000, 3000), (30, 60, 90))
    return {
        "webp_canvas_16383x16383": Hostile(bytes(webp), 400, "area limit, before libwebp allocates"),
        "gif_screen_65535x65535": Hostile(bytes(gif), 400, "side limit"),
        "gif_screen_7000x7000": Hostile(bytes(wide_gif), 200, "49 MB of palette indices"),
        "bmp_7000x7000_truncated": Hostile(bytes(bmp), 400, "truncated"),
        "tiff_4m_strip_offsets": Hostile(tiff_tags, 400, "tag numbers"),
        "webp_12mp": Hostile(encode(grey, "WEBP"), 400, "decode budget: libwebp's canvases, ~238 MiB"),
        "heic_12mp": Hostile(encode(grey, "HEIF"), 200, "a phone's photo, ~158 MiB estimated"),
        "avif_12mp": Hostile(encode(grey, "AVIF", speed=10), 200, "a phone's photo, ~169 MiB estimated"),
        "tiff_12mp": Hostile(encode(grey, "TIFF", compression="tiff_lzw"), 200, "48 MB"),
        "gif_12mp": Hostile(encode(grey.convert("P"), "GIF"), 200, "12 MB of indices"),
        "avif_2mp": Hostile(encode(grey.resize((1600, 1200)), "AVIF", speed=10), 200, "23 MB"),
    }


# Past the PNG signature (8 bytes) and IHDR chunk (25 bytes): chunks put here are read before any IDAT.
AFTER_IHDR = 8 + 25


def _metadata(segments: int) -> bytes:
    """`segments` APP1 (EXIF) and as many APP2 (ICC profile) segments of 65 kB each."""
    exif = _segment(0xE1, b"Exif\0\0MM\0*\0\0\0\x08" + bytes(65_000)) * segments
    icc = (
        _segment(0xE2, b"ICC_PROFILE\0" + bytes([i + 1, segments]) + bytes(65_000)) for i in range(segments)
    )
    return exif + b"".join(icc)


def _size_bombs() -> dict[str, Hostile]:
    """Bombs by area and by one side, and the biggest PNGs and progressive JPEGs a request is admitted for."""
    return {
        "area_bomb_png_20000x20000": Hostile(bomb_png(), 400, "area limit, from the header"),
        "thin_png_49000000x1": Hostile(_thin_png(49_000_000, 1), 400, "side limit"),
        "tall_png_1x49000000": Hostile(_thin_png(1, 49_000_000), 400, "side limit"),
        "png_7000x7000_rgb": Hostile(_png(7000, 7000, bytes(1 + 3 * 7000)), 400, "decode budget, ~195 MiB"),
        "png_7000x7000_rgba": Hostile(_png(7000, 7000, bytes(1 + 4 * 7000), 6), 400, "decode budget"),
        "progressive_jpeg_7000x7000_444": Hostile(
            encode(Image.new("RGB", (7000, 7000), (90, 120, 30)), "JPEG", progressive=True, subsampling=0),
            400,
            "decode budget: libjpeg keeps every coefficient of a progressive JPEG, ~292 MiB",
        ),
        "png_8000x6000_rgb": Hostile(_png(8000, 6000, bytes(1 + 3 * 8000)), 200, "~192 MB, just within"),
        "png_8000x6000_rgba": Hostile(_png(8000, 6000, bytes(1 + 4 * 8000), 6), 200, "~192 MB, just within"),
        "progressive_jpeg_6000x6000": Hostile(
            encode(Image.new("RGB", (6000, 6000), (90, 120, 30)), "JPEG", progressive=True),
            200,
            "~113 MiB of coefficients",
        ),
    }


def _malformed_headers(jpeg: bytes, png: bytes) -> dict[str, Hostile]:
    """Malformed headers that Pillow walks in Python, a few µs a segment or a byte."""
    return {
        "jpeg_4m_empty_segments": Hostile(
            jpeg[:2] + _segment(0xFE, b"") * 4_000_000 + jpeg[2:], 400, "segments"
        ),
        "jpeg_16m_fill_bytes": Hostile(jpeg[:2] + b"\xff" * 16_000_000 + jpeg[2:], 400, "junk"),
        "png_1m_empty_chunks": Hostile(
            png[:AFTER_IHDR] + _chunk(b"abCd", b"") * 1_000_000 + png[AFTER_IHDR:], 400, "chunks"
        ),
    }


def _metadata_bombs(jpeg: bytes, png: bytes) -> dict[str, Hostile]:
    """Decompression bombs in PNG text and profile chunks, and a JPEG with too much EXIF and ICC."""
    before_iend = len(png) - 12  # IEND, the last chunk, is 12 bytes
    text_bomb = zlib.compress(b"a" * ((1 << 20) - 100), 9)  # just under Pillow's MAX_TEXT_CHUNK
    deep_bomb = zlib.compress(b"a" * 200_000_000, 9)  # 200 MB of text in 200 kB
    ztxt = b"".join(_chunk(b"zTXt", b"k%d\0\0" % i + text_bomb) for i in range(2_000))
    return {
        "png_ztxt_bombs": Hostile(png[:AFTER_IHDR] + ztxt + png[AFTER_IHDR:], 400, "MAX_TEXT_MEMORY"),
        "png_ztxt_bombs_after_idat": Hostile(
            png[:before_iend] + ztxt + png[before_iend:], 400, "MAX_TEXT_MEMORY"
        ),
        "png_ztxt_200mb": Hostile(
            png[:AFTER_IHDR] + _chunk(b"zTXt", b"k\0\0" + deep_bomb) + png[AFTER_IHDR:], 400, "MAX_TEXT_CHUNK"
        ),
        "png_iccp_200mb": Hostile(
            png[:AFTER_IHDR] + _chunk(b"iCCP", b"icc\0\0" + deep_bomb) + png[AFTER_IHDR:],
            400,
            "MAX_TEXT_CHUNK",
        ),
        "jpeg_19mb_exif_and_icc": Hostile(
            jpeg[:2] + _metadata(150) + jpeg[2:], 400, "8 MiB of metadata at most"
        ),
    }


def _big_but_legitimate(jpeg: bytes, png: bytes) -> dict[str, Hostile]:
    """Large metadata, 12-48 Mpx photos and a 10,000-frame GIF: all classified."""
    alpha_row = b"\x00" + bytes(v for x in range(4000) for v in (x % 256, 90, 200, x % 251))
    return {
        "jpeg_4mb_exif_and_icc": Hostile(jpeg[:2] + _metadata(30) + jpeg[2:], 200, "kept"),
        "png_15mb_text": Hostile(
            png[:AFTER_IHDR] + _chunk(b"tEXt", b"k\0" + b"a" * 15_000_000) + png[AFTER_IHDR:], 200, "text"
        ),
        "jpeg_12mp": Hostile(encode(Image.new("RGB", (4000, 3000), (30, 60, 90)), "JPEG"), 200, "a photo"),
        "jpeg_48mp_baseline": Hostile(
            encode(Image.new("RGB", (8000, 6000), (30, 60, 90)), "JPEG"), 200, "decoded at 1/8"
        ),
        "jpeg_12mp_progressive": Hostile(
            encode(Image.new("RGB", (4000, 3000), (30, 60, 90)), "JPEG", progressive=True), 200, "36 MB"
        ),
        "png_4000x3000_rgb": Hostile(
            _png(4000, 3000, b"\x00" + bytes(range(256)) * 46 + bytes(224)), 200, "48 MB"
        ),
        "png_4000x3000_rgba": Hostile(_png(4000, 3000, alpha_row, 6), 200, "48 MB, composited in strips"),
        "gif_10000_frames.jpg": Hostile(_gif_frames(10_000), 200, "the first frame only"),
    }


def _named_jpg(small: Image.Image) -> dict[str, Hostile]:
    """Every other format uploaded as .jpg: the type is sniffed from the bytes, never taken from the name."""
    hostile: dict[str, Hostile] = {}
    for fmt in ("GIF", "WEBP", "AVIF", "HEIF", "BMP", "TIFF"):
        hostile[f"{fmt.lower()}_named.jpg"] = Hostile(encode(small, fmt), 200, "sniffed, not named")
    for fmt in ("PDF", "ICO", "PPM", "TGA", "JPEG2000", "EPS"):
        hostile[f"{fmt.lower()}_named.jpg"] = Hostile(encode(small, fmt), 415, "refused by type")
    return hostile


def build_hostile() -> dict[str, Hostile]:
    small = Image.new("RGB", (640, 480), (200, 40, 40))
    jpeg, png = encode(small, "JPEG"), encode(small, "PNG")
    return {
        **_size_bombs(),
        **_malformed_headers(jpeg, png),
        **_metadata_bombs(jpeg, png),
        **_big_but_legitimate(jpeg, png),
        **_other_formats(small),
        **_named_jpg(small),
    }
