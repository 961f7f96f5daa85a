"""The load generator's request bodies: what each server receives is the photo, framed as it expects."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from bench import loadgen
from services.web import oip_codec

PHOTO = b"\xff\xd8\xff\xe0 not really a JPEG, but bytes the server must get back unchanged \x00\x01\xff\xd9"


def test_oip_binary_body_parses_as_one_bytes_element():
    body, content_type, headers = loadgen.oip_binary(PHOTO)
    request = oip_codec.parse_infer(body, headers[oip_codec.HEADER_LENGTH], max_images=4)
    assert request.images == [PHOTO]
    split = int(headers["Inference-Header-Content-Length"])  # the binary part: a 4-byte LE length, the photo
    assert body[split : split + 4] == len(PHOTO).to_bytes(4, "little") and body[split + 4 :] == PHOTO
    assert content_type == "application/octet-stream"


@pytest.fixture
def oip_server() -> Iterator[tuple[str, list[bytes]]]:
    """A stdlib HTTP server that decodes each body with zerolens's OIP codec: 200 when it holds PHOTO."""
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the load generator uses it

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                images = oip_codec.parse_infer(body, self.headers.get(oip_codec.HEADER_LENGTH), 4).images
            except oip_codec.InferError:
                images = []
            received.extend(images)
            self.send_response(200 if images == [PHOTO] else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/models/m/infer", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_run_level_sends_the_oip_header(oip_server):
    url, received = oip_server
    level = loadgen.run_level(url, [loadgen.oip_binary(PHOTO)], concurrency=2, duration_s=0.2)
    assert level.ok > 0 and not level.summary()["errors"]
    assert set(received) == {PHOTO}


def test_raw_and_multipart_bodies_carry_the_photo():
    assert loadgen.raw(PHOTO) == (PHOTO, "image/jpeg")
    body, content_type = loadgen.multipart(PHOTO, "a.jpg")
    boundary = content_type.split("boundary=")[1]
    assert PHOTO in body and body.endswith(f"\r\n--{boundary}--\r\n".encode())
    assert loadgen.headers(loadgen.oip_binary(PHOTO))["Content-Type"] == "application/octet-stream"
