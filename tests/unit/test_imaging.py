"""Untrusted uploads through services.imaging: good variants decode right, bad ones are refused clearly."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from services import imaging
from services.config import ImageLimits
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
    assert imaging.sniff(b"GIF89a....") == "GIF"
    assert imaging.sniff(b"%PDF-1.7") is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_load_rgb_gives_a_square_rgb_of_the_right_size(fmt):
    out = imaging.load_rgb(encode(halves(1600, 1200), fmt), 224, 0.875)
    assert out.size == (224, 224) and out.mode == "RGB"
    left, right = out.getpixel((20, 112)), out.getpixel((200, 112))
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180°: red ends up on the right
    out = imaging.load_rgb(encode(halves(), "JPEG", exif=exif), 224, 0.875)
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
    out = imaging.load_rgb(encode(img, "PNG"), 64, 1.0)
    assert out.getpixel((32, 32)) == (255, 255, 255)


def test_cmyk_jpeg_and_palette_png_decode():
    cmyk = Image.new("CMYK", (300, 300), (0, 255, 255, 0))  # red in CMYK
    out = imaging.load_rgb(encode(cmyk, "JPEG"), 64, 1.0)
    r, g, b = out.getpixel((32, 32))
    assert r > 200 and g < 60 and b < 60
    pal = halves().convert("P")
    assert imaging.load_rgb(encode(pal, "PNG"), 64, 1.0).mode == "RGB"


def test_16_bit_greyscale_is_scaled_not_clipped():
    img = Image.new("I;16", (100, 100), 32768)  # mid grey in 16 bits
    out = imaging.load_rgb(encode(img, "PNG"), 32, 1.0)
    assert 120 <= out.getpixel((16, 16))[0] <= 136


@pytest.mark.parametrize(
    ("data", "message", "unsupported"),
    [
        (b"", "empty", False),
        (b"just some text, named cat.jpg", "not an image of an accepted type", True),
        (b"8BPS" + b"\0" * 20, "a Photoshop \\(PSD\\) file", True),
        (b"%PDF-1.7 ...", "a PDF file", True),
        (png_header_claiming(20_000, 20_000), "400,000,000 pixels", False),
        (b"\xff\xd8\xff\xe0garbage that is not a jpeg", "cannot read JPEG", False),
    ],
    ids=["empty", "text", "psd", "pdf", "bomb", "garbage-jpeg"],
)
def test_bad_uploads_are_refused_by_open_image_and_load(data, message, unsupported):
    for call in (lambda: imaging.open_image(data, LIMIT), lambda: imaging.load_rgb(data, 224, 0.875)):
        with pytest.raises(ImageError, match=message) as info:
            call()
        assert info.value.unsupported is unsupported


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"\x89PNG\r\n\x1a\n", "PNG"),  # breaks off right after its signature
        (encode(halves(), "PNG")[:12], "PNG"),  # ... inside its first chunk's header
        (encode(halves(), "JPEG")[:4], "JPEG"),
        (encode(halves(), "GIF")[:8], "GIF"),
        (encode(halves(), "BMP")[:8], "BMP"),
    ],
    ids=["png-signature-only", "png-cut-in-ihdr", "jpeg", "gif", "bmp"],
)
def test_a_header_that_breaks_off_is_a_plain_sentence_without_python_internals(data, fmt):
    # Pillow says "cannot identify image file <_io.BytesIO object at 0x…>": users get a sentence instead
    for call in (lambda: imaging.open_image(data, LIMIT), lambda: imaging.load_rgb(data, 224, 0.875)):
        with pytest.raises(ImageError) as info:
            call()
        assert str(info.value) == f"cannot read {fmt} image: the file is truncated or damaged"
        assert info.value.unsupported is False  # the type is accepted: a bad image (400), not a wrong type


def test_truncated_jpeg_passes_the_header_checks_but_fails_decode():
    data = encode(halves(800, 600), "JPEG")[:3000]
    info = imaging.describe(imaging.open_image(data, LIMIT))
    assert (info.format, info.width, info.height) == ("JPEG", 800, 600)
    with pytest.raises(ImageError, match="cannot decode image"):
        imaging.load_rgb(data, 224, 0.875)


def test_pixel_limit_is_configurable():
    data = encode(halves(400, 300), "PNG")
    with pytest.raises(ImageError, match="over the 100,000 limit"):
        imaging.open_image(data, 100_000)


def test_unsupported_mode_is_refused():
    data = encode(Image.new("LAB", (10, 10)), "TIFF")
    with pytest.raises(ImageError, match="unsupported image mode 'LAB'"):
        imaging.open_image(data, LIMIT)


def test_a_side_over_the_limit_is_refused_from_the_header():
    thin = png_header_claiming(49_000_000, 1)  # 49 Mpx: passes the area limit
    with pytest.raises(ImageError, match="49,000,000×1 pixels, a side over the 30,000 pixel limit"):
        imaging.open_image(thin, LIMIT)
    with pytest.raises(ImageError, match="a side over the 300 pixel limit"):
        imaging.open_image(encode(halves(400, 300), "PNG"), LIMIT, max_side=300)
    assert imaging.open_image(encode(halves(400, 300), "PNG"), LIMIT, max_side=400).size == (400, 300)


def test_a_png_over_the_decode_budget_is_refused_before_decoding():
    img = imaging.open_image(png_header_claiming(8000, 6000), LIMIT)  # within the area limit
    with pytest.raises(ImageError) as info:
        imaging.fit(img, 224, 0.875, 64 * 2**20)
    message = str(info.value)
    assert "8,000×6,000 PNG would take about 191 MiB, over the 64 MiB limit per image" in message
    assert "up to about 17 megapixels; send a JPEG" in message


def test_progressive_jpeg_costs_full_size_coefficients_and_baseline_does_not():
    photo = halves(3000, 2000)
    budget = 16 * 1024 * 1024  # 6 Mpx: progressive needs 18 MB of coefficients, baseline ~1 MB at 1/8
    baseline = imaging.load_rgb(encode(photo, "JPEG"), 224, 0.875, ImageLimits(max_decode_bytes=budget))
    assert baseline.size == (224, 224)
    with pytest.raises(
        ImageError, match=r"3,000×2,000 progressive or multi-scan JPEG would take about 2\d MiB"
    ):
        limits = ImageLimits(max_decode_bytes=budget)
        imaging.load_rgb(encode(photo, "JPEG", progressive=True), 224, 0.875, limits)


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize(
    ("first_scan_components", "progressive", "full"), [(3, False, False), (1, False, True), (3, True, True)]
)
def test_multi_scan_and_progressive_jpegs_are_known_from_the_header(first_scan_components, progressive, full):
    sof = struct.pack(">BHHB", 8, 100, 100, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = bytes([first_scan_components]) + b"\x01\x00" * first_scan_components + b"\x00\x3f\x00"
    header = b"\xff\xd8" + _jpeg_segment(0xC2 if progressive else 0xC0, sof) + _jpeg_segment(0xDA, sos)
    assert imaging._jpeg_full_coefficients(header) is full


@pytest.mark.parametrize(
    ("insert", "message"),
    [
        (_jpeg_segment(0xFE, b"") * 1_001, "more than 1,000 header segments"),
        (b"\xff" * 5_000, "more than 4,096 bytes outside any segment"),
        (_jpeg_segment(0xC3, b"\x08\x00\x10\x00\x10\x01\x01\x11\x00"), "lossless or hierarchical"),
    ],
    ids=["segments", "fill-bytes", "lossless"],
)
def test_malformed_jpeg_headers_are_refused_before_pillow_walks_them(insert, message):
    jpeg = encode(halves(), "JPEG")
    with pytest.raises(ImageError, match=message):
        imaging.open_image(jpeg[:2] + insert + jpeg[2:], LIMIT)


def test_a_few_fill_bytes_and_segments_are_tolerated():
    jpeg = encode(halves(), "JPEG")
    data = jpeg[:2] + _jpeg_segment(0xFE, b"hi") * 50 + b"\xff" * 100 + jpeg[2:]
    assert imaging.load_rgb(data, 64, 1.0).size == (64, 64)


def test_a_png_of_too_many_chunks_is_refused():
    png = encode(halves(), "PNG")
    empty = struct.pack(">I", 0) + b"abCd" + struct.pack(">I", zlib.crc32(b"abCd"))
    with pytest.raises(ImageError, match="more than 40,000 chunks"):
        imaging.open_image(png[:33] + empty * 40_001 + png[33:], LIMIT)


def test_a_multi_picture_jpeg_is_a_jpeg_decoded_at_reduced_size():
    buf = io.BytesIO()
    halves(4000, 3000).save(buf, "MPO", save_all=True, append_images=[halves(400, 300)])
    img = imaging.open_image(buf.getvalue(), LIMIT)
    assert imaging.describe(img).format == "JPEG"
    out = imaging.fit(img, 224, 0.875)
    assert img.size == (500, 375) and out.size == (224, 224)  # drafted to 1/8


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "RGB"])
def test_strip_conversion_gives_the_pixels_of_converting_the_whole_image(mode):
    gradient = Image.linear_gradient("L").resize((2400, 1800))
    rgba = Image.merge(
        "RGBA", [gradient, gradient.rotate(90), gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient]
    )
    img = (
        rgba.convert(mode)
        if mode != "I;16"
        else gradient.convert("I").point(lambda v: v * 256).convert("I;16")
    )
    data = encode(img, "PNG")
    whole = imaging._to_rgb(Image.open(io.BytesIO(data)))
    box = imaging.centre_box(*whole.size, 0.875)
    expected = whole.resize((224, 224), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    assert imaging.load_rgb(data, 224, 0.875).tobytes() == expected.tobytes()
