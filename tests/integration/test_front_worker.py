"""The buffering gunicorn worker with real clients: chunked uploads, keep-alive, pipelining, split packets."""

from __future__ import annotations

import json
import socket

import pytest
import requests

pytestmark = pytest.mark.integration


def _responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read `count` HTTP responses (Content-Length framed) from a connection."""
    out, buf = [], b""
    sock.settimeout(30)
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(buf) < length:
            buf += sock.recv(65536)
        out.append((int(head.split(b" ")[1]), buf[:length]))
        buf = buf[length:]
    return out


def test_a_chunked_upload_is_classified(stack, photos):
    _, web = stack
    data = photos["coffee.jpg"].data
    pieces = (data[i : i + 7000] for i in range(0, len(data), 7000))  # requests sends these as chunks
    resp = requests.post(
        f"http://127.0.0.1:{web.ports['http']}/api/v1/predict",
        data=pieces,
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0]["label"] == "espresso"


def test_pipelined_and_byte_by_byte_requests_on_one_connection(stack, photos):
    _, web = stack
    data = photos["coffee.jpg"].data
    upload = (
        b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(data)
        + data
    )
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", web.ports["http"])) as sock:
        sock.sendall(health + upload + health[:10])  # two whole requests and the start of a third
        sock.sendall(health[10:])
        for byte in range(len(health)):  # a fourth, one byte per packet
            sock.sendall(health[byte : byte + 1])
        answers = _responses(sock, 4)
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[1][1])["predictions"][0]["label"] == "espresso"
