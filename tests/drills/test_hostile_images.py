"""B2: hostile images are refused fast, or classified, with the memory of each request and process bounded.

Bombs by area and by one side, progressive JPEGs, huge EXIF/ICC blocks, PNG text bombs, malformed headers,
every other format named .jpg, a 10,000-frame GIF and phones' 12 Mpx HEIC, AVIF and WebP photos: each gets a
4xx within 1 s or a correct 200, and the peak memory a request adds stays under `max_decode_bytes` (192 MiB)
+ 25 MB, on both decode paths (the web tier's open_image + fit, the model server's decode_image) and through
a real gunicorn web tier. There, eight big photos at once (each admitted alone) are decoded as the worker's
`decode_memory_bytes` (256 MiB) allows, the rest answered 503 after the wait: a worker grows less than that
budget + 25 MB.

Pillow allocates outside Python's allocator, so memory is read from the kernel: after the decoding process
resets its peak (`5` to /proc/self/clear_refs), VmHWM less VmRSS is what the decode added. Each input is
decoded in a process of its own, forked from a warmed-up parent, so no earlier decode masks its growth.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from services import formats  # noqa: F401  (registers pillow-heif: HEIC files are made here too)
from services.config import ImageLimits
from tests.conftest import bomb_png
from tests.support.servers import ROOT, Proc, model_server, web_server

pytestmark = [pytest.mark.drill, pytest.mark.integration]

MB = 1_000_000
LIMITS = ImageLimits()
# Besides the estimate a decode is admitted for: Python objects, the upload's copies, allocator slack.
OVERHEAD = 25 * MB
PEAK_LIMIT = LIMITS.max_decode_bytes + OVERHEAD  # memory one request may add
BUDGET_LIMIT = LIMITS.decode_memory_bytes + OVERHEAD  # memory a web worker's decodes at once may add
REFUSE_LIMIT_S = 1.0


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


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def _gif_frames(frames: int) -> bytes:
    one = _encode(Image.new("P", (64, 64), 1), "GIF")
    start = one.index(b",")  # the first image descriptor
    control = b"!\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension: 10 ms per frame
    return one[:start] + (control + one[start:-1]) * frames + b";"


def _other_formats(small: Image.Image) -> dict[str, Hostile]:
    """Bombs and big photos in the formats beyond JPEG and PNG."""
    webp = bytearray(_encode(small, "WEBP", exif=b"Exif\0\0II*\0" + bytes(8)))
    webp[24:30] = (16_383 - 1).to_bytes(3, "little") * 2  # the VP8X canvas: 268 Mpx
    gif = bytearray(_encode(small.convert("P"), "GIF"))
    struct.pack_into("<HH", gif, 6, 65_535, 65_535)  # the logical screen; the frame stays 640×480
    wide_gif = bytearray(gif)
    struct.pack_into("<HH", wide_gif, 6, 7_000, 7_000)  # 49 Mpx of screen, one small frame: classified
    bmp = bytearray(_encode(small, "BMP"))
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
        "webp_12mp": Hostile(_encode(grey, "WEBP"), 400, "decode budget: libwebp's canvases, ~238 MiB"),
        "heic_12mp": Hostile(_encode(grey, "HEIF"), 200, "a phone's photo, ~158 MiB estimated"),
        "avif_12mp": Hostile(_encode(grey, "AVIF", speed=10), 200, "a phone's photo, ~169 MiB estimated"),
        "tiff_12mp": Hostile(_encode(grey, "TIFF", compression="tiff_lzw"), 200, "48 MB"),
        "gif_12mp": Hostile(_encode(grey.convert("P"), "GIF"), 200, "12 MB of indices"),
        "avif_2mp": Hostile(_encode(grey.resize((1600, 1200)), "AVIF", speed=10), 200, "23 MB"),
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
            _encode(Image.new("RGB", (7000, 7000), (90, 120, 30)), "JPEG", progressive=True, subsampling=0),
            400,
            "decode budget: libjpeg keeps every coefficient of a progressive JPEG, ~292 MiB",
        ),
        "png_8000x6000_rgb": Hostile(_png(8000, 6000, bytes(1 + 3 * 8000)), 200, "~192 MB, just within"),
        "png_8000x6000_rgba": Hostile(_png(8000, 6000, bytes(1 + 4 * 8000), 6), 200, "~192 MB, just within"),
        "progressive_jpeg_6000x6000": Hostile(
            _encode(Image.new("RGB", (6000, 6000), (90, 120, 30)), "JPEG", progressive=True),
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
        "jpeg_12mp": Hostile(_encode(Image.new("RGB", (4000, 3000), (30, 60, 90)), "JPEG"), 200, "a photo"),
        "jpeg_48mp_baseline": Hostile(
            _encode(Image.new("RGB", (8000, 6000), (30, 60, 90)), "JPEG"), 200, "decoded at 1/8"
        ),
        "jpeg_12mp_progressive": Hostile(
            _encode(Image.new("RGB", (4000, 3000), (30, 60, 90)), "JPEG", progressive=True), 200, "36 MB"
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
        hostile[f"{fmt.lower()}_named.jpg"] = Hostile(_encode(small, fmt), 200, "sniffed, not named")
    for fmt in ("PDF", "ICO", "PPM", "TGA", "JPEG2000", "EPS"):
        hostile[f"{fmt.lower()}_named.jpg"] = Hostile(_encode(small, fmt), 415, "refused by type")
    return hostile


def build_hostile() -> dict[str, Hostile]:
    small = Image.new("RGB", (640, 480), (200, 40, 40))
    jpeg, png = _encode(small, "JPEG"), _encode(small, "PNG")
    return {
        **_size_bombs(),
        **_malformed_headers(jpeg, png),
        **_metadata_bombs(jpeg, png),
        **_big_but_legitimate(jpeg, png),
        **_other_formats(small),
        **_named_jpg(small),
    }


@pytest.fixture(scope="module")
def hostile() -> dict[str, Hostile]:
    return build_hostile()


PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from services import imaging
    from services.model import preprocess

    def vm(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    PATHS = {
        "web": lambda data: imaging.fit(imaging.open_image(data, 50_000_000), 224, 0.875),
        "model": lambda data: preprocess.decode_image(data, 224, 0.875),
    }
    folder = Path(sys.argv[1])
    warm = (folder / "warm-up").read_bytes()
    for call in PATHS.values():
        call(warm)
    for name in json.loads(sys.argv[2]):
        data = (folder / name).read_bytes()
        for path, call in PATHS.items():
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                Path("/proc/self/clear_refs").write_text("5")
                before = vm("VmRSS")
                start = time.perf_counter()
                try:
                    out = call(data)
                    shape = getattr(out, "shape", None) or (*out.size, len(out.getbands()))
                    outcome = "ok" if tuple(shape) == (224, 224, 3) else f"bad output {shape}"
                except imaging.ImageError as exc:
                    outcome = ("415 " if exc.unsupported else "400 ") + str(exc)
                except BaseException as exc:
                    outcome = "crashed " + repr(exc)
                seconds = time.perf_counter() - start
                peak = vm("VmHWM") - before
                row = {"name": name, "path": path, "s": seconds, "peak": peak, "outcome": outcome}
                os.write(w, json.dumps(row).encode())
                os._exit(0)
            os.close(w)
            with os.fdopen(r) as pipe:
                text = pipe.read()
            os.waitpid(pid, 0)
            print(text or json.dumps({"name": name, "path": path, "outcome": "died"}), flush=True)
    """
)


def decode_in_fresh_processes(hostile: dict[str, Hostile], folder: Path) -> list[dict]:
    for name, item in hostile.items():
        (folder / name).write_bytes(item.data)
    (folder / "warm-up").write_bytes(_encode(Image.new("RGB", (900, 700), (1, 2, 3)), "JPEG"))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), json.dumps(list(hostile))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_hostile_images_in_both_decode_paths(hostile, tmp_path, drill_record):
    rows = decode_in_fresh_processes(hostile, tmp_path)
    assert len(rows) == 2 * len(hostile)
    refused = [r for r in rows if hostile[r["name"]].status != 200]
    worst = max(rows, key=lambda r: r.get("peak", 0))
    drill_record(
        "B2",
        "Hostile images: bombs by area and by side, progressive JPEG, huge EXIF/ICC, PNG text bombs, "
        "malformed headers, other formats named .jpg, a 10,000-frame GIF, 12 Mpx phone photos "
        "(both decode paths)",
        inputs=len(hostile),
        worst_peak_mb=round(worst.get("peak", 0) / MB, 1),
        worst_peak_input=worst["name"],
        worst_reject_ms=round(max(r.get("s", 0) for r in refused) * 1000, 1),
        worst_ok_ms=round(max(r.get("s", 0) for r in rows if r not in refused) * 1000, 1),
    )
    for row in rows:
        expected = hostile[row["name"]].status
        where = f"{row['name']} ({row['path']}): {row['outcome'][:200]}"
        if expected == 200:
            assert row["outcome"] == "ok", where
        else:
            assert row["outcome"].startswith(str(expected)), where
            assert row["s"] < REFUSE_LIMIT_S, f"{where} took {row['s']:.2f} s"
        assert row["peak"] < PEAK_LIMIT, f"{where} added {row['peak'] / MB:.0f} MB"


def _workers(web: Proc) -> list[int]:
    assert web.proc is not None
    return [int(pid) for pid in web.rss_mb() if int(pid) != web.proc.pid]


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peaks(pids: list[int]) -> dict[int, int]:
    """Reset each process's peak RSS; its RSS now, in bytes."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return {pid: _status_kb(pid, "VmRSS") * 1024 for pid in pids}


def _growth(before: dict[int, int]) -> int:
    return max(_status_kb(pid, "VmHWM") * 1024 - rss for pid, rss in before.items())


def _post(port: int, name: str, data: bytes) -> tuple[int, float, str]:
    start = time.perf_counter()
    resp = requests.post(
        f"http://127.0.0.1:{port}/api/v1/predict",
        files={"image": (name if name.endswith(".jpg") else name + ".jpg", data, "image/jpeg")},
        timeout=30,
    )
    return resp.status_code, time.perf_counter() - start, resp.text


THROUGH_GUNICORN = [
    "thin_png_49000000x1",
    "progressive_jpeg_7000x7000_444",
    "png_7000x7000_rgba",
    "png_8000x6000_rgba",
    "heic_12mp",
    "avif_12mp",
    "webp_12mp",
    "jpeg_4m_empty_segments",
    "png_ztxt_bombs",
    "gif_10000_frames.jpg",
    "webp_named.jpg",
    "png_4000x3000_rgba",
    "jpeg_48mp_baseline",
    "jpeg_19mb_exif_and_icc",
    "jpeg_4mb_exif_and_icc",
]
AT_ONCE = [
    "thin_png_49000000x1",
    "tall_png_1x49000000",
    "progressive_jpeg_7000x7000_444",
    "png_7000x7000_rgb",
] * 2
# Each admitted alone (113-192 MiB estimated), more than a worker's budget together: they take turns.
BIG_AT_ONCE = ["heic_12mp", "avif_12mp", "png_8000x6000_rgb", "progressive_jpeg_6000x6000"] * 2


def _at_once(port: int, names: list[str], hostile: dict[str, Hostile], workers: list[int]) -> tuple:
    """Post them all at once: each one's (status, seconds, body, Retry-After), and a worker's most growth."""

    def post(name: str) -> tuple[int, float, str, str | None]:
        start = time.perf_counter()
        data = hostile[name].data
        resp = requests.post(
            f"http://127.0.0.1:{port}/api/v1/predict",
            files={"image": (name + ".jpg", data, "image/jpeg")},
            timeout=30,
        )
        return resp.status_code, time.perf_counter() - start, resp.text, resp.headers.get("Retry-After")

    before = _reset_peaks(workers)
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(post, names))
    return answers, _growth(before)


def test_hostile_images_through_gunicorn(hostile, tmp_path, spawn, photos, drill_record):
    model = spawn(model_server(tmp_path))
    web = spawn(web_server(tmp_path, model.ports["zmq"]))
    port = web.ports["http"]
    assert _post(port, "chelsea.jpg", photos["chelsea.jpg"].data)[0] == 200  # warm: first request loads
    workers = _workers(web)
    results = {}
    for name in THROUGH_GUNICORN:
        before = _reset_peaks(workers)
        status, seconds, body = _post(port, name, hostile[name].data)
        results[name] = (status, seconds, _growth(before), body)
    at_once, at_once_growth = _at_once(port, AT_ONCE, hostile, workers)
    big, big_growth = _at_once(port, BIG_AT_ONCE, hostile, workers)
    after = _post(port, "chelsea.jpg", photos["chelsea.jpg"].data)
    refused = [r for n, r in results.items() if hostile[n].status != 200]
    drill_record(
        "B2",
        "Hostile images through gunicorn: 4xx within 1 s, or 200; 8 bombs, then 8 big photos, at once",
        worst_reject_ms=round(max(r[1] for r in refused) * 1000, 1),
        worst_worker_growth_mb=round(max(r[2] for r in results.values()) / MB, 1),
        worst_worker_growth_input=max(results, key=lambda n: results[n][2]),
        eight_at_once_worker_growth_mb=round(at_once_growth / MB, 1),
        eight_at_once_worst_ms=round(max(r[1] for r in at_once) * 1000, 1),
        eight_big_at_once_worker_growth_mb=round(big_growth / MB, 1),
        eight_big_at_once_classified=sum(r[0] == 200 for r in big),
        eight_big_at_once_worst_ms=round(max(r[1] for r in big) * 1000, 1),
    )
    for name, (status, seconds, growth, body) in results.items():
        assert status == hostile[name].status, f"{name}: {status} {body[:300]}"
        if status != 200:
            assert seconds < REFUSE_LIMIT_S, f"{name}: {seconds:.2f} s"
        assert growth < PEAK_LIMIT, f"{name}: a web worker grew {growth / MB:.0f} MB"
    assert [r[0] for r in at_once] == [400] * len(AT_ONCE), [r[2][:200] for r in at_once]
    assert at_once_growth < 100 * MB, f"8 bombs at once: a web worker grew {at_once_growth / MB:.0f} MB"
    # Classified, or 503 + Retry-After once the worker's budget stayed in use for the whole wait.
    assert all(r[0] == 200 or r[0] == 503 and r[3] for r in big), [(r[0], r[2][:200]) for r in big]
    assert any(r[0] == 200 for r in big)
    assert big_growth < BUDGET_LIMIT, f"8 big photos at once: a web worker grew {big_growth / MB:.0f} MB"
    assert after[0] == 200 and _workers(web) == workers  # still serving, no worker was lost
