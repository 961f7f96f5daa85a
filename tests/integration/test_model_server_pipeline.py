"""The model server's sockets, workers and pipeline over real loopback TCP, with a fake model.

The fake model is here only where a test needs exact timing (a held batch for overload, deadlines and
draining); tests/integration/test_system.py runs the real model.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from services import config, keys, protocol
from services.config import ModelConfig
from services.model.health import HealthServer
from services.model.metrics import ServerMetrics
from services.model.server import ModelServer
from services.protocol import Request, Status
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


class FakeRuntime:
    """Class = the image's mean brightness // 26 (so a test knows the answer); can be held on a gate."""

    name = "fake"
    labels = [f"class-{i}" for i in range(10)]

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0  # calls that reached the model, held at the gate while it is closed
        self._lock = threading.Lock()
        self.batch_sizes: list[int] = []

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            self.entered += 1
        self.gate.wait(30)
        self.batch_sizes.append(len(images))
        out = np.full((len(images), 10), 0.01, dtype=np.float32)
        for row, image in zip(out, images, strict=True):
            row[int(image.mean()) // 26] = 0.91
        return out


def sample(server: ModelServer, name: str, **labels: str) -> float | None:
    """A sample of the server's metrics, as /metrics shows it; None for a labelled series not created yet."""
    return server.metrics.registry.get_sample_value(name, labels)


def grey_jpeg(level: int, size: int = 320) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (level, level, level)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def curve_dir(tmp_path) -> Path:
    """CurveZMQ keys for the servers of a test and for its clients (the ctx fixture's sockets)."""
    keys.generate(tmp_path / "curve")
    return tmp_path / "curve"


@pytest.fixture
def make_server(fake_runtime, curve_dir):
    servers: list[ModelServer] = []

    def start(**overrides) -> ModelServer:
        args = {"host": "127.0.0.1", "port": 0, "max_batch_delay_ms": 5.0, "curve_keys_dir": str(curve_dir)}
        args |= overrides
        cfg = config.load(ModelConfig, overrides=args, environ={})
        server = ModelServer(cfg, fake_runtime, ServerMetrics()).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(drain_timeout_s=5)


class Client:
    """A DEALER client speaking the protocol, as the web tier does (without its retries)."""

    def __init__(self, ctx: zmq.Context, port: int) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def send(self, image: bytes, timeout_ms: int = 5000, **kw) -> str:
        req = Request(protocol.new_request_id(), protocol.deadline_after_ms(timeout_ms), image=image, **kw)
        self.sock.send_multipart(protocol.encode_request(req))
        return req.request_id

    def recv(self, timeout_s: float = 10) -> protocol.Reply:
        assert self.sock.poll(timeout_s * 1000), "no reply"
        return protocol.decode_reply(self.sock.recv_multipart())

    def call(self, image: bytes, **kw) -> protocol.Reply:
        rid = self.send(image, **kw)
        reply = self.recv()
        assert reply.request_id == rid
        return reply


@pytest.fixture
def ctx(curve_dir):
    """A context whose sockets are CurveZMQ clients with the web tier's key (context-wide defaults)."""
    with zmq.Context() as context:
        client = keys.load_client_keys(curve_dir)
        context.curve_serverkey = client.server
        context.curve_publickey = client.public
        context.curve_secretkey = client.secret
        yield context


def test_classifies_and_reports_timings(make_server, ctx):
    server = make_server()
    reply = Client(ctx, server.port).call(grey_jpeg(130), top_k=3)
    assert reply.status is Status.OK, reply.error
    assert [p.label for p in reply.predictions][0] == "class-5"
    assert len(reply.predictions) == 3
    assert set(reply.timings_ms) == {"queue", "preprocess", "inference", "total"}
    assert reply.model == "fake" and reply.batch_size >= 1


def test_concurrent_requests_are_batched_and_routed_back(make_server, ctx, fake_runtime):
    server = make_server(max_batch_size=16, max_batch_delay_ms=20)
    clients = [Client(ctx, server.port) for _ in range(32)]
    levels = [(i * 8) % 250 for i in range(32)]
    ids = [c.send(grey_jpeg(level)) for c, level in zip(clients, levels, strict=True)]
    for c, rid, level in zip(clients, ids, levels, strict=True):
        reply = c.recv()
        assert reply.request_id == rid and reply.status is Status.OK
        assert abs(reply.predictions[0].index - level // 26) <= 1  # JPEG rounding may shift a level
    assert max(fake_runtime.batch_sizes) > 1


def test_bad_images_fail_alone(make_server, ctx):
    server = make_server()
    client = Client(ctx, server.port)
    truncated = grey_jpeg(100, size=800)[:500]
    for data, status in [
        (b"hello", Status.BAD_IMAGE),
        (truncated, Status.BAD_IMAGE),
        (b"", Status.BAD_IMAGE),
    ]:
        reply = client.call(data)
        assert reply.status is status and reply.error
    assert client.call(grey_jpeg(10)).status is Status.OK


def test_the_image_limits_of_the_settings_apply(make_server, ctx):
    by_side = make_server(max_image_side=100)
    reply = Client(ctx, by_side.port).call(grey_jpeg(10, size=130))
    assert reply.status is Status.BAD_IMAGE and "side" in reply.error
    by_memory = make_server(max_decode_bytes=10_000)
    png = io.BytesIO()
    Image.new("RGB", (130, 130)).save(png, "PNG")
    reply = Client(ctx, by_memory.port).call(png.getvalue())
    assert reply.status is Status.BAD_IMAGE and "limit per image" in reply.error


def test_over_byte_limit_is_too_large(make_server, ctx):
    server = make_server(max_upload_bytes=1000)
    assert Client(ctx, server.port).call(grey_jpeg(10)).status is Status.TOO_LARGE


def test_malformed_frames_get_errors_and_the_server_keeps_serving(make_server, ctx):
    server = make_server()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(f"tcp://127.0.0.1:{server.port}")
    header = b'{"id": "m1", "deadline_ms": 99999999999999}'
    cases = [
        [b"", b"ZL99", header, b"x"],
        [b"", protocol.VERSION, b"{{{{", b"x"],
        [b"", protocol.VERSION],
        [b"no delimiter at all"],
        [b"", protocol.VERSION, header, b"x", b"y"],
    ]
    for frames in cases:
        raw.send_multipart(frames)
        assert raw.poll(5000), f"no answer to {frames!r}"
        reply = raw.recv_multipart()
        assert reply[-2] == protocol.VERSION and b'"BAD_REQUEST"' in reply[-1]
    # Not even ZMTP: raw bytes on the TCP port.
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 10)
    assert Client(ctx, server.port).call(grey_jpeg(200)).status is Status.OK
    assert sample(server, "zerolens_model_malformed_messages_total") >= len(cases)


def test_full_queue_answers_overloaded_at_once(make_server, ctx, fake_runtime):
    server = make_server(max_queue_size=2, max_batch_size=1, max_batch_delay_ms=0)
    fake_runtime.gate.clear()
    clients = [Client(ctx, server.port) for _ in range(5)]
    held = [c.send(grey_jpeg(50)) for c in clients[:2]]
    wait_until(lambda: server.pipeline.in_flight == 2)  # both admitted: the queue is full
    started = time.monotonic()
    refused = [c.call(grey_jpeg(50)) for c in clients[2:]]
    assert all(r.status is Status.OVERLOADED for r in refused)
    assert time.monotonic() - started < 2  # refused at once, not after the held batch
    fake_runtime.gate.set()
    for c, rid in zip(clients[:2], held, strict=True):
        reply = c.recv()
        assert reply.request_id == rid and reply.status is Status.OK


def test_replies_say_whether_the_queue_filled_while_they_were_held(make_server, ctx, fake_runtime):
    server = make_server(max_queue_size=2, max_batch_size=1, max_batch_delay_ms=0, inference_workers=1)
    alone = Client(ctx, server.port).call(grey_jpeg(50))
    assert (alone.queue_depth, alone.queue_capacity) == (1, 2)  # room to spare: a client may send more
    fake_runtime.gate.clear()
    first, second = Client(ctx, server.port), Client(ctx, server.port)
    first.send(grey_jpeg(50))
    wait_until(lambda: server.pipeline.in_flight == 1)
    second.send(grey_jpeg(60))
    wait_until(lambda: server.pipeline.in_flight == 2)  # the queue is full
    fake_runtime.gate.set()
    # the first is answered while the second is still held, the second alone: both saw a full queue
    assert [(r.queue_depth, r.queue_capacity) for r in (first.recv(), second.recv())] == [(2, 2), (2, 2)]
    assert Client(ctx, server.port).call(grey_jpeg(70)).queue_depth == 1  # and room again afterwards


def test_deadlines_are_checked_on_arrival_and_before_inference(make_server, ctx, fake_runtime):
    # one inference worker, so that the blocker holds it while the late request waits in the queue
    server = make_server(max_batch_size=1, max_batch_delay_ms=0, inference_workers=1)
    client = Client(ctx, server.port)
    assert client.call(grey_jpeg(50), timeout_ms=-1).status is Status.DEADLINE_EXCEEDED
    fake_runtime.gate.clear()
    blocker, late = Client(ctx, server.port), Client(ctx, server.port)
    blocker.send(grey_jpeg(50))
    wait_until(lambda: fake_runtime.entered == 1)  # the blocker holds the only inference worker
    sent = time.monotonic()
    late.send(grey_jpeg(60), timeout_ms=300)
    wait_until(lambda: server.pipeline.in_flight == 2)  # the late one is admitted and waits
    wait_until(lambda: time.monotonic() > sent + 0.35)  # until its deadline has passed
    fake_runtime.gate.set()
    assert blocker.recv().status is Status.OK
    assert late.recv().status is Status.DEADLINE_EXCEEDED
    assert fake_runtime.batch_sizes == [1]  # the late one never reached the model


def test_ping_answers_with_the_model_name(make_server, ctx):
    server = make_server()
    client = Client(ctx, server.port)
    client.sock.send_multipart(
        protocol.encode_request(Request("p1", protocol.deadline_after_ms(1000), op="ping"))
    )
    reply = client.recv()
    assert reply.status is Status.OK and reply.model == "fake"


def test_drain_finishes_in_flight_work_and_refuses_new(ctx, fake_runtime, curve_dir):
    overrides = {"host": "127.0.0.1", "port": 0, "max_batch_size": 1, "curve_keys_dir": str(curve_dir)}
    cfg = config.load(ModelConfig, overrides=overrides, environ={})
    server = ModelServer(cfg, fake_runtime, ServerMetrics()).start()
    fake_runtime.gate.clear()
    inflight = Client(ctx, server.port)
    rid = inflight.send(grey_jpeg(80))
    wait_until(lambda: fake_runtime.entered == 1)  # held inside the model
    stopper = threading.Thread(target=server.stop, args=(10,))
    stopper.start()
    wait_until(lambda: server.pipeline.draining)
    assert server.readiness() == (False, "draining: finishing the requests in flight, taking no new ones")
    refused = Client(ctx, server.port).call(grey_jpeg(80))
    assert refused.status is Status.OVERLOADED and "draining" in refused.error
    fake_runtime.gate.set()
    reply = inflight.recv()
    assert reply.request_id == rid and reply.status is Status.OK
    stopper.join(10)
    assert not stopper.is_alive()


def test_health_port_reports_liveness_readiness_and_metrics(make_server, ctx):
    server = make_server()
    Client(ctx, server.port).call(grey_jpeg(50))
    health = HealthServer("127.0.0.1", 0, server.liveness, server.readiness, server.metrics.registry).start()
    try:
        base = f"http://127.0.0.1:{health.port}"
        live = urllib.request.urlopen(base + "/livez")
        assert live.status == 200 and live.headers["Content-Type"] == "application/json"
        assert json.load(live) == {"status": "alive"}
        assert json.load(urllib.request.urlopen(base + "/readyz")) == {"status": "ready", "model": "fake"}
        text = urllib.request.urlopen(base + "/metrics").read().decode()
        assert 'zerolens_model_requests_total{status="OK"} 1.0' in text
        assert "zerolens_model_batch_size_bucket" in text and "zerolens_model_queue_seconds" in text
    finally:
        health.stop()


def test_health_port_says_why_it_is_not_ready_or_not_alive():
    def dead() -> tuple[bool, str]:
        return False, "proxy or batcher thread stopped"

    def loading() -> tuple[bool, str]:
        return False, "loading and warming up the model"

    health = HealthServer("127.0.0.1", 0, dead, loading, ServerMetrics().registry).start()
    try:
        base = f"http://127.0.0.1:{health.port}"
        for path, body in (
            ("/readyz", {"status": "not ready", "reason": "loading and warming up the model"}),
            ("/livez", {"status": "not alive", "reason": "proxy or batcher thread stopped"}),
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path)
            assert refused.value.code == 503 and json.load(refused.value) == body
    finally:
        health.stop()


def test_decoded_pixels_skip_the_decoder_and_wrong_shapes_are_refused(make_server, ctx):
    server = make_server(input_size=32)
    client = Client(ctx, server.port)
    pixels = bytes([130]) * (32 * 32 * 3)
    reply = client.call(pixels, encoding=protocol.ENCODING_RGB8, shape=(32, 32, 3))
    assert reply.status is Status.OK and reply.predictions[0].label == "class-5"
    assert reply.timings_ms["preprocess"] == 0
    wrong = client.call(bytes(16 * 16 * 3), encoding=protocol.ENCODING_RGB8, shape=(16, 16, 3))
    assert wrong.status is Status.BAD_REQUEST and "32×32×3" in wrong.error
    client.sock.send_multipart(
        protocol.encode_request(Request("p", protocol.deadline_after_ms(1000), op="ping"))
    )
    ping = client.recv()
    assert (ping.input_size, ping.crop_fraction) == (32, 0.875)


def test_a_client_over_its_share_is_refused_alone(make_server, ctx, fake_runtime):
    server = make_server(max_in_flight_per_client=2, max_batch_size=1, max_batch_delay_ms=0)
    fake_runtime.gate.clear()
    greedy, other = Client(ctx, server.port), Client(ctx, server.port)
    held = [greedy.send(grey_jpeg(50)) for _ in range(2)]
    wait_until(lambda: server.pipeline.in_flight == 2)
    refused = greedy.call(grey_jpeg(50))  # answered at once, while its first two are held
    assert refused.status is Status.OVERLOADED and "this client has 2 requests in flight" in refused.error
    rid = other.send(grey_jpeg(60))  # another peer still gets in
    wait_until(lambda: server.pipeline.in_flight == 3)
    assert server.pipeline.clients() == 2
    fake_runtime.gate.set()
    assert {(r.request_id, r.status) for r in (greedy.recv(), greedy.recv())} == {
        (h, Status.OK) for h in held
    }
    reply = other.recv()
    assert reply.request_id == rid and reply.status is Status.OK
    wait_until(lambda: server.pipeline.clients() == 0)  # nothing kept per client once it is answered
    assert sample(server, "zerolens_model_refused_requests_total", reason="client_limit") == 1


def test_messages_with_too_many_frames_or_bytes_are_dropped_and_counted(make_server, ctx):
    server = make_server(max_upload_bytes=1000)
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(f"tcp://127.0.0.1:{server.port}")
    dropped = "zerolens_model_dropped_messages_total"
    raw.send_multipart([b"x"] * 1000)
    wait_until(lambda: sample(server, dropped, reason="frames") == 1)
    # Each frame is under the frame limit (1000 + 64 KiB); together they are over the message limit.
    chunk = b"\0" * 60_000
    raw.send_multipart([b"", protocol.VERSION, chunk, chunk, chunk])
    wait_until(lambda: sample(server, dropped, reason="bytes") == 1)
    assert not raw.poll(0)  # no replies to those
    assert Client(ctx, server.port).call(grey_jpeg(200)).status is Status.TOO_LARGE  # still serving
    raw.close()
