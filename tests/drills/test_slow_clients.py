"""B4: slow clients (slowloris headers, slow bodies) against a real gunicorn web tier and model server."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.drills.load import timed_predict
from tests.support.servers import web_server

pytestmark = pytest.mark.integration

SLOW = 50
BYTE_EVERY_S = 1.0
ROUNDS = 4  # seconds of attack


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, dict[str, object]]:
    """The shared `stack` (tests/conftest.py): the model's defaults, web deadlines slow clients can meet."""
    return {"model": {}, "web": {"client_header_timeout_s": 30, "client_body_timeout_s": 30}}


class Dripper:
    """Sockets that send their request one byte per BYTE_EVERY_S, from one thread."""

    def __init__(self, port: int, requests_: list[bytes]) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port)) for _ in requests_]
        self.pending = [bytearray(r) for r in requests_]
        self.stop = threading.Event()
        self.sent = 0
        self.rounds = 0
        self.closed_by_server = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for sock, rest in zip(self.socks, self.pending, strict=True):
                if rest:
                    try:
                        sock.send(rest[:1])
                        del rest[:1]
                        self.sent += 1
                    except OSError:
                        rest.clear()
                        self.closed_by_server += 1
            self.rounds += 1
            self.stop.wait(BYTE_EVERY_S)  # the attack's pace, not a synchronisation

    def __enter__(self) -> Dripper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


def test_slow_clients_hold_no_thread(stack, photos, drill_record):
    model, web = stack
    port = web.ports["http"]
    data = photos["coffee.jpg"].data
    assert timed_predict(port, data, "coffee.jpg")[0] == 200
    head = b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    slow_heads = [head + b"Content-Length: %d\r\n\r\n" % len(data) for _ in range(SLOW // 2)]
    # slow bodies: the head arrives at once, the body one byte a second
    with Dripper(port, slow_heads) as heads:
        bodies = [socket.create_connection(("127.0.0.1", port)) for _ in range(SLOW - SLOW // 2)]
        try:
            for sock in bodies:
                sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(data) + data[:100])
            results: list[tuple[int, float]] = []
            with ThreadPoolExecutor(8) as pool:
                while heads.rounds < ROUNDS:  # normal traffic for as long as the attack lasts
                    results += pool.map(lambda _: timed_predict(port, data, "coffee.jpg"), range(16))
            sent, closed = heads.sent, heads.closed_by_server
        finally:
            for sock in bodies:
                sock.close()
    codes = [code for code, _ in results]
    latencies = sorted(elapsed for _, elapsed in results)
    drill_record(
        "B4",
        f"{SLOW} slow clients (half at 1 byte/s headers, half stalled bodies) beside 8 normal ones",
        normal_requests=len(results),
        normal_ok=codes.count(200),
        normal_p50_ms=statistics.median(latencies) * 1000,
        normal_max_ms=latencies[-1] * 1000,
        slow_bytes_sent=sent,
        slow_closed_by_server=closed,
    )
    assert codes == [200] * len(results), codes
    assert latencies[-1] < 10.0  # the request deadline (request_timeout_ms)
    assert closed == 0  # within their header deadline slow clients are kept, not cut


def test_a_half_sent_head_gets_408_and_is_closed(tmp_path, drill_record):
    with web_server(tmp_path, 1, client_header_timeout_s=1, client_body_timeout_s=1).start() as web:
        port = web.ports["http"]
        results = {}
        for name, partial in {
            "half head": b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-",
            "half body": b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
        }.items():
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.settimeout(10)
                start = time.monotonic()
                sock.sendall(partial)
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                results[name] = (answer.split(b"\r\n", 1)[0], time.monotonic() - start)
        with socket.create_connection(("127.0.0.1", port)) as idle:  # connected, never a byte
            idle.settimeout(10)
            start = time.monotonic()
            assert idle.recv(4096) == b""
            results["silent"] = (b"closed", time.monotonic() - start)
    drill_record(
        "B4",
        "A half-sent request (timeouts set to 1 s)",
        **{f"{name.replace(' ', '_')}_closed_after_s": round(t, 2) for name, (_, t) in results.items()},
    )
    assert results["half head"][0] == b"HTTP/1.1 408 Request Timeout"
    assert results["half body"][0] == b"HTTP/1.1 408 Request Timeout"
    assert all(elapsed < 5 for _, elapsed in results.values()), results
