"""The buffering gunicorn worker with real clients: chunked uploads, keep-alive, pipelining, split packets."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.drills.fakes import InProcess
from tests.drills.test_overload import counter
from tests.support.servers import web_server

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


def test_a_client_that_expects_100_continue_is_told_to_go_on_at_once(stack, photos):
    """curl holds back bodies over 1 MB until 100 Continue (or a second): the loop answers it on the head."""
    _, web = stack
    data = photos["coffee.jpg"].data
    head = (
        b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(data)
    )
    with socket.create_connection(("127.0.0.1", web.ports["http"]), timeout=30) as sock:
        sock.sendall(head)
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"  # blocks until it comes: no body sent yet
        sock.sendall(data)
        buf = b""
        while b"espresso" not in buf and b"\r\n0\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    final = buf[buf.find(b"HTTP/1.1 2") :]  # after gunicorn's own, late 100 Continue
    assert final.startswith(b"HTTP/1.1 200"), buf[:300]
    assert b"espresso" in buf


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


def test_a_full_admission_limit_is_refused_by_the_loop(tmp_path, photos, spawn):
    """One request holds the model's only slot, the next is answered OVERLOADED (the process's limit falls to
    one), and the third is refused by the worker's loop: 503 + Retry-After at once, never sent on."""
    model = InProcess(max_queue_size=1, max_batch_size=1, max_batch_delay_ms=0)
    try:
        web = spawn(web_server(tmp_path, model.port, zmq_security="plaintext", web_workers=1))
        url = f"http://127.0.0.1:{web.ports['http']}"
        files = {"image": ("photo.jpg", photos["coffee.jpg"].data, "image/jpeg")}

        def predict() -> requests.Response:
            return requests.post(f"{url}/api/v1/predict", files=files, timeout=30)

        assert predict().status_code == 200  # the input size is known, the limit is still wide open
        model.runtime.hang()
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(predict)
            deadline = time.monotonic() + 30
            while model.runtime.hung_at is None and time.monotonic() < deadline:
                threading.Event().wait(0.01)  # until the model holds it
            overloaded = predict()
            assert overloaded.status_code == 503 and overloaded.headers["Retry-After"] == "1"
            refused = predict()
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.headers["Connection"] == "close"  # the loop's own answer
            model.runtime.release()
            assert held.result().status_code == 200
        assert predict().status_code == 200  # the slot is free again: admitted
        web_text = requests.get(f"{url}/metrics", timeout=10).text
        model_text = requests.get(model.url("/metrics"), timeout=10).text
        assert counter(web_text, "zerolens_web_shed_requests_total", 'reason="saturated"') == 1
        assert counter(model_text, "zerolens_model_refused_requests_total") == 1  # only the second
        assert model.runtime.images == 3
    finally:
        model.close()
