"""The whole system, really run: gunicorn → ZeroMQ over loopback TCP → model server → EfficientNet-Lite0."""

from __future__ import annotations

import io
import re
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pillow_heif
import pytest
import requests
from PIL import Image

from tests.support.servers import Proc, http_status, model_server, web_server

pytestmark = pytest.mark.integration

CATS = {"tabby", "tiger cat", "Egyptian cat"}


def predict(web: Proc, upload, timeout: float = 30, **params) -> requests.Response:
    url = f"http://127.0.0.1:{web.ports['http']}/api/v1/predict"
    return requests.post(
        url,
        files={"image": (upload.filename, upload.data, upload.content_type)},
        params=params,
        timeout=timeout,
    )


def model_metric(model: Proc, name: str, missing: float | None = None) -> float:
    """A sample from the model server's /metrics; `missing` for a labelled series not created yet."""
    text = requests.get(f"http://127.0.0.1:{model.ports['health']}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    if match is None and missing is not None:
        return missing
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_real_photos_are_classified(stack, photos):
    _, web = stack
    cat = predict(web, photos["chelsea.jpg"], top_k=3)
    assert cat.status_code == 200, cat.text
    body = cat.json()
    assert CATS & {p["label"] for p in body["predictions"]}
    assert len(body["predictions"]) == 3
    assert body["model"] == "efficientnet_lite0"
    coffee = predict(web, photos["coffee.jpg"]).json()
    assert coffee["predictions"][0]["label"] == "espresso"
    assert coffee["predictions"][0]["probability"] > 0.8
    assert predict(web, photos["china.jpg"]).json()["predictions"][0]["label"] == "palace"
    assert predict(web, photos["chelsea.png"]).json()["predictions"][0]["label"] in CATS


def test_two_photos_in_one_request_are_answered_in_order(stack, photos):
    _, web = stack
    url = f"http://127.0.0.1:{web.ports['http']}/api/v1/predict"
    parts = [("image", (name, photos[name].data, "image/jpeg")) for name in ("coffee.jpg", "chelsea.jpg")]
    answer = requests.post(url, files=parts, params={"top_k": 3}, timeout=30)
    assert answer.status_code == 200, answer.text
    coffee, cat = answer.json()["results"]
    assert coffee["predictions"][0]["label"] == "espresso" and coffee["image"]["width"] == 600
    assert CATS & {p["label"] for p in cat["predictions"]} and cat["image"]["width"] == 451
    for result in (coffee, cat):
        timings = result["timings_ms"]
        assert set(timings) == {"total", "decode", "queue", "inference", "model_server", "roundtrip"}
        assert timings["total"] >= timings["roundtrip"] >= timings["model_server"] >= timings["inference"] > 0
        assert timings["decode"] > 0


def test_form_upload_renders_the_results_page(stack, photos):
    _, web = stack
    base = f"http://127.0.0.1:{web.ports['http']}"
    assert "<form" in requests.get(base + "/", timeout=5).text
    page = requests.post(
        base + "/uploader",
        files={"image": ("coffee.jpg", photos["coffee.jpg"].data, "image/jpeg")},
        timeout=30,
    )
    assert page.status_code == 200 and "espresso" in page.text


def test_32_concurrent_uploads_are_answered_correctly_and_batched(stack, photos):
    model, web = stack
    batches_before = model_metric(model, "zerolens_model_batch_size_count")
    images_before = model_metric(model, "zerolens_model_batch_size_sum")
    uploads = [photos["coffee.jpg"] if i % 2 else photos["chelsea.jpg"] for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda u: predict(web, u), uploads))
    for upload, resp in zip(uploads, responses, strict=True):
        assert resp.status_code == 200, resp.text
        top = resp.json()["predictions"][0]["label"]
        assert top == "espresso" if upload.filename == "coffee.jpg" else top in CATS
    batches = model_metric(model, "zerolens_model_batch_size_count") - batches_before
    images = model_metric(model, "zerolens_model_batch_size_sum") - images_before
    assert images == 32
    assert batches < 32, "requests were not batched"
    assert max(r.json()["batch_size"] for r in responses) > 1


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("empty", 400),
        ("text", 415),
        ("ico", 415),
        ("truncated_jpeg", 400),
        ("bomb_png", 400),
    ],
)
def test_bad_inputs_get_their_status_and_the_service_keeps_serving(stack, photos, bad_uploads, name, status):
    _, web = stack
    resp = predict(web, bad_uploads[name])
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"]
    assert predict(web, photos["coffee.jpg"]).status_code == 200


@pytest.mark.parametrize("name", ["png_alpha", "cmyk_jpeg", "png_16bit", "exif_rotated_jpeg"])
def test_unusual_but_valid_images_are_classified(stack, bad_uploads, name):
    _, web = stack
    resp = predict(web, bad_uploads[name])
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 5


def test_model_server_decodes_when_the_web_tier_does_not(tmp_path, photos, bad_uploads, spawn):
    model = spawn(model_server(tmp_path))
    web = spawn(web_server(tmp_path, model.ports["zmq"], decode_in_web="false"))
    coffee = predict(web, photos["coffee.jpg"]).json()
    assert coffee["predictions"][0]["label"] == "espresso"
    assert coffee["timings_ms"]["decode"] > 0  # measured on the model server
    assert predict(web, bad_uploads["truncated_jpeg"]).status_code == 400  # BAD_IMAGE from the server


def _reencoded(photo, fmt: str) -> bytes:
    pillow_heif.register_heif_opener()  # Pillow writes HEIF through it
    out = io.BytesIO()
    Image.open(io.BytesIO(photo.data)).save(out, fmt, quality=90)
    return out.getvalue()


@pytest.mark.parametrize("decode_in_web", ["true", "false"])
def test_phone_and_web_formats_are_classified_on_either_tier(tmp_path, photos, spawn, decode_in_web):
    """WebP and HEIC decode in the web tier, or on the model server when the upload is sent as it is."""
    model = spawn(model_server(tmp_path))
    web = spawn(web_server(tmp_path, model.ports["zmq"], decode_in_web=decode_in_web))
    url = f"http://127.0.0.1:{web.ports['http']}/api/v1/predict"
    for fmt, mimetype in (("WEBP", "image/webp"), ("HEIF", "image/heic")):
        body = _reencoded(photos["chelsea.jpg"], fmt)
        resp = requests.post(url, data=body, headers={"Content-Type": mimetype}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert CATS & {p["label"] for p in resp.json()["predictions"]}, (fmt, resp.json()["predictions"])
        assert resp.json()["image"]["format"] in {"WEBP", "HEIF"}


def test_upload_over_the_limit_is_413(tmp_path, photos, spawn):
    limit = len(photos["coffee.jpg"].data) + 10_000
    assert len(photos["chelsea.png"].data) > limit
    model = spawn(model_server(tmp_path))
    web = spawn(web_server(tmp_path, model.ports["zmq"], max_upload_bytes=limit))
    resp = predict(web, photos["chelsea.png"])
    assert resp.status_code == 413
    assert predict(web, photos["coffee.jpg"]).status_code == 200


def test_model_server_down_then_restarted(tmp_path, photos, spawn):
    """Stopped: the web answers 503/504 within its timeout, no worker hangs. Restarted: it recovers alone."""
    model = spawn(model_server(tmp_path))
    port = model.ports["zmq"]
    web = spawn(web_server(tmp_path, port, request_timeout_ms=3000, attempt_timeout_ms=1000, retries=1))
    base = f"http://127.0.0.1:{web.ports['http']}"
    assert predict(web, photos["coffee.jpg"]).status_code == 200
    assert http_status(base + "/readyz") == 200
    assert model.stop() == 0  # SIGTERM: drains and exits cleanly

    def timed() -> tuple[int, float]:
        start = time.monotonic()
        return predict(web, photos["coffee.jpg"]).status_code, time.monotonic() - start

    with ThreadPoolExecutor(8) as pool:  # more requests than gunicorn has threads: none may hang
        results = list(pool.map(lambda _: timed(), range(8)))
    assert all(code in (503, 504) for code, _ in results), results
    assert all(elapsed < 3.0 + 2.0 for _, elapsed in results), results
    assert http_status(base + "/readyz") == 503

    spawn(model_server(tmp_path, port=port))
    # Each gunicorn thread's socket reconnects on its own backoff (at most 1 s): poll, don't assume.
    deadline = time.monotonic() + 20
    while (resp := predict(web, photos["coffee.jpg"])).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["label"] == "espresso"
    # /readyz may land on a thread whose socket has not reconnected yet: it must turn ready, not at once.
    while (ready := http_status(base + "/readyz")) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready == 200


def test_keras_runtime_serves_the_same_answers(tmp_path, photos, spawn):
    model = spawn(model_server(tmp_path, runtime="keras"), timeout_s=180)
    web = spawn(web_server(tmp_path, model.ports["zmq"]))
    cat = predict(web, photos["chelsea.jpg"], top_k=3).json()
    assert CATS & {p["label"] for p in cat["predictions"]}
    coffee = predict(web, photos["coffee.jpg"]).json()
    assert coffee["predictions"][0]["label"] == "espresso"
    assert model.stop() == 0


# `python -m services.model` itself (settings, keys, SIGTERM handler, drain), with a runtime that holds every
# batch until the test releases it. The runtime connects to the test's gate (port: argv[1]), writes one line
# per batch that reaches it (its image count) and waits for a byte, or for the test to close the gate.
GATED_MODEL_SERVER = """
import contextlib, socket, sys, threading
import numpy as np
from services.model import __main__ as entry

class GatedRuntime:
    name, labels = "gated", [f"class-{i}" for i in range(10)]

    def __init__(self, port):
        self._gate = socket.create_connection(("127.0.0.1", port))
        self._lock, self._released = threading.Lock(), threading.Event()
        threading.Thread(target=self._await_release, daemon=True).start()

    def _await_release(self):
        with contextlib.suppress(OSError):
            self._gate.recv(1)
        self._released.set()

    def predict_batch(self, images):
        with self._lock, contextlib.suppress(OSError):
            self._gate.sendall(b"%d\\n" % len(images))
        self._released.wait(60)
        out = np.full((len(images), len(self.labels)), 0.01, dtype=np.float32)
        out[:, 3] = 0.91
        return out

entry._load_model = lambda cfg, metrics: GatedRuntime(int(sys.argv[1]))
sys.exit(entry.main())
"""


def test_sigterm_drains_in_flight_requests(tmp_path, photos, spawn):
    """SIGTERM while the model holds four requests: all four are answered 200, a new one is refused (503)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        # one inference worker per request, so every request is inside the model, none waits in the queue
        held_model = model_server(tmp_path, inference_workers=4)
        held_model.argv = [sys.executable, "-c", GATED_MODEL_SERVER, str(listener.getsockname()[1])]
        model = spawn(held_model)
        gate, _ = listener.accept()
    # one web process: its single input-size ping comes before the drain, so the only refusal is `late`'s
    web = spawn(web_server(tmp_path, model.ports["zmq"], web_workers=1, web_threads=5))
    with ThreadPoolExecutor(4) as pool, gate, gate.makefile("rb") as batches:
        gate.settimeout(30)
        futures = [pool.submit(predict, web, photos["coffee.jpg"]) for _ in range(4)]
        held = 0
        while held < 4:  # a line per batch that reached the model: wait until it holds all four
            line = batches.readline()
            assert line, f"the model server closed the gate:\n{model.log()}"
            held += int(line)
        model.proc.send_signal(signal.SIGTERM)
        # The server's main thread handles the signal on its own time; the held batches keep it draining.
        readyz, deadline = f"http://127.0.0.1:{model.ports['health']}/readyz", time.monotonic() + 10
        while not requests.get(readyz, timeout=5).json().get("reason", "").startswith("draining"):
            assert time.monotonic() < deadline, "SIGTERM did not start the drain"
            time.sleep(0.01)
        late = predict(web, photos["coffee.jpg"])
        refused = model_metric(model, 'zerolens_model_refused_requests_total{reason="draining"}', 0.0)
        gate.sendall(b"x")  # release the four held requests
        codes = [f.result().status_code for f in futures]
    assert codes == [200] * 4, codes
    assert late.status_code == 503 and refused == 1, (late.status_code, late.text, refused)
    assert model.proc.wait(30) == 0  # drained, then exited cleanly


def test_requests_spread_over_several_model_servers_and_survive_one_dying(tmp_path, photos, spawn):
    first, second = spawn(model_server(tmp_path)), spawn(model_server(tmp_path))
    endpoints = ",".join(f"tcp://127.0.0.1:{m.ports['zmq']}" for m in (first, second))
    web = spawn(web_server(tmp_path, 0, model_server=endpoints, attempt_timeout_ms=1500))
    served = [0.0, 0.0]
    for _ in range(40):  # a thread's first request may go to whichever server connected first
        assert predict(web, photos["coffee.jpg"]).status_code == 200
        served = [model_metric(m, 'zerolens_model_requests_total{status="OK"}', 0.0) for m in (first, second)]
        if all(n > 0 for n in served):
            break
    assert all(n > 0 for n in served), served  # the DEALER spreads work over every endpoint
    first.stop(signal.SIGKILL)  # a crash: no drain, no goodbye
    codes = [predict(web, photos["coffee.jpg"]).status_code for _ in range(12)]
    assert codes == [200] * 12, codes
