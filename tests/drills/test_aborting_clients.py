"""F10: aborting clients (half-sent bodies, gone before the reply) cost no inference; others are served."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.drills.fakes import InProcess
from tests.support.servers import web_server

pytestmark = pytest.mark.integration

ABORTS = 5


@pytest.fixture
def model() -> Iterator[InProcess]:
    made = InProcess(max_batch_size=1, max_batch_delay_ms=0)
    try:
        yield made
    finally:
        made.close()


def _upload(data: bytes) -> bytes:
    return (
        b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(data)
        + data
    )


def _dropped(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.findall(r'^zerolens_web_dropped_requests_total\{stage="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {stage: float(n) for stage, n in found}


def test_aborted_requests_cost_no_inference(model, tmp_path, photos, spawn, drill_record):
    data = photos["coffee.jpg"].data
    # one worker with one thread: while a request holds it, the next ones wait their turn, deterministically
    web = spawn(web_server(tmp_path, model.port, zmq_security="plaintext", web_workers=1, web_threads=1))
    port = web.ports["http"]

    def predict() -> int:
        return requests.post(
            f"http://127.0.0.1:{port}/api/v1/predict",
            data=data,
            headers={"Content-Type": "image/jpeg"},
            timeout=30,
        ).status_code

    assert predict() == 200
    before = model.runtime.images
    # half-sent bodies: the head and half the photo, then the client leaves
    for _ in range(ABORTS):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_upload(data)[: len(data) // 2])
    # gone before the reply: the whole request, then the client leaves while another holds the only thread
    model.runtime.hang()
    holder: list[int] = []
    holding = threading.Thread(target=lambda: holder.append(predict()))
    holding.start()
    deadline = time.monotonic() + 10
    while model.runtime.hung_at is None:  # the holder's request is inside the model
        assert time.monotonic() < deadline
        threading.Event().wait(0.01)
    for _ in range(ABORTS):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_upload(data))
    model.runtime.release()
    holding.join(30)
    others = [predict() for _ in range(3)]
    dropped = _dropped(port)
    inferred = model.runtime.images - before
    drill_record(
        "F10",
        f"{ABORTS} half-sent bodies and {ABORTS} clients gone before the reply, beside normal clients",
        inferred_for_aborted=inferred - len(holder) - len(others),
        dropped_incomplete=dropped.get("incomplete", 0),
        dropped_before_decode=dropped.get("before_decode", 0),
        dropped_before_send=dropped.get("before_send", 0),
        others_served=sum(code == 200 for code in holder + others),
    )
    assert holder == [200] and others == [200] * 3
    assert inferred == 1 + 3  # the holder and the three after: nothing for the aborted ones
    assert dropped.get("incomplete", 0) == ABORTS
    assert dropped.get("before_decode", 0) + dropped.get("before_send", 0) == ABORTS
