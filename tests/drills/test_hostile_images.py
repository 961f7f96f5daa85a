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

import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from services import formats  # noqa: F401  (registers pillow-heif: HEIC files are made here too)
from services.config import ImageLimits
from tests.drills.hostile_images import Hostile, build_hostile, encode
from tests.support.servers import ROOT, Proc, model_server, web_server

pytestmark = [pytest.mark.drill, pytest.mark.integration]

MB = 1_000_000
LIMITS = ImageLimits()
# Besides the estimate a decode is admitted for: Python objects, the upload's copies, allocator slack.
OVERHEAD = 25 * MB
PEAK_LIMIT = LIMITS.max_decode_bytes + OVERHEAD  # memory one request may add
BUDGET_LIMIT = LIMITS.decode_memory_bytes + OVERHEAD  # memory a web worker's decodes at once may add
REFUSE_LIMIT_S = 1.0


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
    (folder / "warm-up").write_bytes(encode(Image.new("RGB", (900, 700), (1, 2, 3)), "JPEG"))
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
