"""Closed-loop load straight on a model server: client processes sending already-decoded pixels (rgb8).

Each process keeps `window` requests in flight on one DEALER socket (the wire protocol of
services/protocol.py, CurveZMQ when given keys) and sends the next as soon as an answer arrives: a single
thread per process keeps up with thousands of answers a second, where Python threads would fight over the
GIL. After one warm-up round per client, all start together and count the answers of `duration_s`.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from services import keys, protocol

NO_ANSWER_S = 60.0  # a request unanswered this long ends the client: the server is stuck


@dataclass
class ClientResult:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Load:
    endpoint: str
    size: int  # the model's input side: frames of size × size × 3 uint8
    window: int  # requests in flight per client
    duration_s: float
    keys_dir: str | None = None  # CurveZMQ client keys; None: plaintext


class _Client:
    def __init__(self, load: Load, seed: int) -> None:
        self.load = load
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if load.keys_dir is not None:
            keys.make_client(self.sock, keys.load_client_keys(load.keys_dir))
        self.sock.connect(load.endpoint)
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, (load.size, load.size, 3), np.uint8).tobytes()
        self.ids = (f"{seed}.{i}" for i in itertools.count())
        self.sent: dict[str, float] = {}

    def send(self) -> None:
        rid = next(self.ids)
        request = protocol.Request(
            rid,
            protocol.deadline_after_ms(NO_ANSWER_S * 1000),
            image=self.pixels,
            encoding=protocol.ENCODING_RGB8,
            shape=(self.load.size, self.load.size, 3),
        )
        self.sent[rid] = time.perf_counter()
        self.sock.send_multipart(protocol.encode_request(request), copy=False)

    def receive(self) -> tuple[protocol.Reply, float]:
        """The next answer and its latency. :raise TimeoutError: none within NO_ANSWER_S."""
        if not self.sock.poll(NO_ANSWER_S * 1000):
            raise TimeoutError(f"no answer within {NO_ANSWER_S:.0f} s")
        reply = protocol.decode_reply(self.sock.recv_multipart())
        return reply, time.perf_counter() - self.sent.pop(reply.request_id)

    def run(self, start: threading.Barrier) -> ClientResult:
        for _ in range(self.load.window):  # warm-up round: connected, and the server's pools touched
            self.send()
        for _ in range(self.load.window):
            self.receive()
        start.wait()
        result, end = ClientResult(), time.perf_counter() + self.load.duration_s
        for _ in range(self.load.window):
            self.send()
        while self.sent:
            reply, latency = self.receive()
            if time.perf_counter() > end:
                continue  # draining: answers after the end are not counted
            if reply.ok:
                result.ok += 1
                result.latencies_s.append(latency)
            else:
                result.errors[reply.status.value] += 1
            self.send()
        return result

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def _client_main(load: Load, seed: int, start: threading.Barrier, out: multiprocessing.Queue) -> None:
    client = _Client(load, seed)
    try:
        out.put(client.run(start))
    except (TimeoutError, zmq.ZMQError, protocol.ProtocolError, threading.BrokenBarrierError) as exc:
        start.abort()  # the others start no measurement without this client
        out.put(ClientResult(errors=Counter({f"{type(exc).__name__}: {exc}": 1})))
    finally:
        client.close()


def run(load: Load, clients: int, on_start: Callable[[], None] | None = None) -> ClientResult:
    """`clients` processes, `load.window` in flight each, for load.duration_s; their results merged.

    `on_start` runs as the measured period starts, once every client has finished its warm-up round.
    """
    mp = multiprocessing.get_context("spawn")  # no inherited ZeroMQ context or accelerator state
    start, out = mp.Barrier(clients + 1), mp.Queue()
    procs = [
        mp.Process(target=_client_main, args=(load, seed, start, out), daemon=True) for seed in range(clients)
    ]
    for proc in procs:
        proc.start()
    try:
        try:
            start.wait(timeout=NO_ANSWER_S * 2)
        except threading.BrokenBarrierError:
            pass  # a client failed before the start: its result says why
        else:
            if on_start is not None:
                on_start()
        merged = ClientResult()
        for _ in procs:
            part: ClientResult = out.get(timeout=load.duration_s + NO_ANSWER_S * 2)
            merged.ok += part.ok
            merged.errors.update(part.errors)
            merged.latencies_s += part.latencies_s
        return merged
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
