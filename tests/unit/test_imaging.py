"""Untrusted uploads through services.imaging: good variants decode right, bad ones are refused clearly."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from services import imaging
from services.imaging import ImageError

LIMIT = 50_000_000


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb as far as the header goes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def halves(width: int = 400, height: int = 300) -> Image.Image:
    """Left half red, right half blue: orientation is visible after resizing."""
    img = Image.new("RGB", (width, height), (255, 0, 0))
    img.paste((0, 0, 255), (width // 2, 0, width, height))
    return img


def test_sniff_ignores_names_and_uses_bytes():
    assert imaging.sniff(encode(halves(), "JPEG")) == "JPEG"
    assert imaging.sniff(encode(halves(), "PNG")) == "PNG"
    assert imaging.sniff(b"GIF89a....") is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_load_rgb_gives_a_square_rgb_of_the_right_size(fmt):
    out = imaging.load_rgb(encode(halves(1600, 1200), fmt), 224, 0.875, LIMIT)
    assert out.size == (224, 224) and out.mode == "RGB"
    left, right = out.getpixel((20, 112)), out.getpixel((200, 112))
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180°: red ends up on the right
    out = imaging.load_rgb(encode(halves(), "JPEG", exif=exif), 224, 0.875, LIMIT)
    assert out.getpixel((200, 112))[0] > 200 and out.getpixel((20, 112))[2] > 200


@pytest.mark.parametrize(
    "img",
    [
        Image.new("RGBA", (300, 300), (0, 0, 0, 0)),  # fully transparent black → white
        Image.new("LA", (300, 300), (0, 0)),
    ],
    ids=["rgba", "la"],
)
def test_transparency_is_composited_on_white(img):
    out = imaging.load_rgb(encode(img, "PNG"), 64, 1.0, LIMIT)
    assert out.getpixel((32, 32)) == (255, 255, 255)


def test_cmyk_jpeg_and_palette_png_decode():
    cmyk = Image.new("CMYK", (300, 300), (0, 255, 255, 0))  # red in CMYK
    out = imaging.load_rgb(encode(cmyk, "JPEG"), 64, 1.0, LIMIT)
    r, g, b = out.getpixel((32, 32))
    assert r > 200 and g < 60 and b < 60
    pal = halves().convert("P")
    assert imaging.load_rgb(encode(pal, "PNG"), 64, 1.0, LIMIT).mode == "RGB"


def test_16_bit_greyscale_is_scaled_not_clipped():
    img = Image.new("I;16", (100, 100), 32768)  # mid grey in 16 bits
    out = imaging.load_rgb(encode(img, "PNG"), 32, 1.0, LIMIT)
    assert 120 <= out.getpixel((16, 16))[0] <= 136


@pytest.mark.parametrize(
    ("data", "message", "unsupported"),
    [
        (b"", "empty", False),
        (b"just some text, named cat.jpg", "not a JPEG or PNG", True),
        (b"GIF89a" + b"\0" * 20, "a GIF file", True),
        (b"%PDF-1.7 ...", "a PDF file", True),
        (png_header_claiming(20_000, 20_000), "400,000,000 pixels", False),
        (b"\xff\xd8\xff\xe0garbage that is not a jpeg", "cannot read JPEG", False),
    ],
    ids=["empty", "text", "gif", "pdf", "bomb", "garbage-jpeg"],
)
def test_bad_uploads_are_refused_by_open_image_and_load(data, message, unsupported):
    for call in (lambda: imaging.open_image(data, LIMIT), lambda: imaging.load_rgb(data, 224, 0.875, LIMIT)):
        with pytest.raises(ImageError, match=message) as info:
            call()
        assert info.value.unsupported is unsupported


def test_truncated_jpeg_passes_the_header_checks_but_fails_decode():
    data = encode(halves(800, 600), "JPEG")[:3000]
    info = imaging.describe(imaging.open_image(data, LIMIT))
    assert (info.format, info.width, info.height) == ("JPEG", 800, 600)
    with pytest.raises(ImageError, match="cannot decode image"):
        imaging.load_rgb(data, 224, 0.875, LIMIT)


def test_pixel_limit_is_configurable():
    data = encode(halves(400, 300), "PNG")
    with pytest.raises(ImageError, match="over the 100,000 limit"):
        imaging.open_image(data, 100_000)


def test_unsupported_mode_is_refused():
    data = encode(Image.new("F", (10, 10)), "TIFF")
    with pytest.raises(ImageError, match="TIFF"):
        imaging.open_image(data, LIMIT)
