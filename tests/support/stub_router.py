"""A scripted ROUTER on loopback that speaks protocol.py: the model client's tests talk to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from services import protocol
from services.protocol import Prediction, Reply, Request, Status

# A script answers the n-th request (from 0) with [(delay_s, Reply or raw frames), ...]; [] ignores it.
Script = Callable[[Request, int], list[tuple[float, Any]]]


def ok(request: Request, model: str = "stub") -> Reply:
    """An OK reply with one prediction per requested label, as a model server would send."""
    predictions = [Prediction(f"label {i}", i, 1.0 / (i + 2)) for i in range(request.top_k)]
    timings = {"queue": 0.5, "inference": 3.0}
    return Reply(request.request_id, Status.OK, None, predictions, timings, batch_size=1, model=model)


def answer(request: Request, n: int) -> list[tuple[float, Any]]:
    return [(0.0, ok(request))]


def ignore(request: Request, n: int) -> list[tuple[float, Any]]:
    return []


def overloaded(request: Request, n: int) -> list[tuple[float, Any]]:
    return [(0.0, Reply(request.request_id, Status.OVERLOADED, "queue full"))]


def sized(request: Request, n: int) -> list[tuple[float, Any]]:
    """A ping reply that tells the model's input size."""
    return [(0.0, Reply(request.request_id, Status.OK, model="stub", input_size=224, crop_fraction=0.875))]


class StubServer:
    """A ROUTER in its own thread that speaks protocol.py and answers as its script says."""

    def __init__(self, port: int, script: Script, host: str = "127.0.0.1") -> None:
        self.endpoint = protocol.tcp_endpoint(host, port)
        self.script = script
        self.requests: list[Request] = []
        self.peers: list[bytes] = []  # the routing id of each request's sender
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stub {self.endpoint}", daemon=True)

    def start(self) -> StubServer:
        self._thread.start()
        assert self._ready.wait(5), "stub server did not start"
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        pending: list[tuple[float, list[bytes], Any]] = []  # (due, envelope, reply)
        with zmq.Context() as context, context.socket(zmq.ROUTER) as frontend:
            frontend.linger = 0
            frontend.ipv6 = True
            frontend.bind(self.endpoint)
            self._ready.set()
            while not self._stop.is_set():
                now = time.monotonic()
                for item in [p for p in pending if p[0] <= now]:
                    pending.remove(item)
                    _, envelope, reply = item
                    frames = protocol.encode_reply(reply) if isinstance(reply, Reply) else reply
                    frontend.send_multipart(envelope + frames[1:])  # the envelope ends with the delimiter
                wait_ms = min([10.0] + [(p[0] - now) * 1000 for p in pending])
                if not frontend.poll(max(wait_ms, 0), zmq.POLLIN):
                    continue
                envelope, body = protocol.split_envelope(frontend.recv_multipart())
                request = protocol.decode_request(body)
                self.peers.append(envelope[0])
                n = len(self.requests)
                self.requests.append(request)
                for delay_s, reply in self.script(request, n):
                    pending.append((time.monotonic() + delay_s, envelope, reply))
