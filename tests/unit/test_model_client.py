"""The Lazy Pirate model client against a scripted ROUTER stub on real loopback sockets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import zmq
from prometheus_client import REGISTRY

from services import protocol
from services.config import WebConfig, load
from services.protocol import OP_PING, Reply, Request, Status
from services.web import tiers
from services.web.model_client import ModelClient, ModelTimeout, ModelUnavailable
from tests.support.stub_router import Script, StubServer, answer, ignore, ok, overloaded, sized
from tests.support.waiting import wait_until


def retries_counted(reason: str) -> float:
    return REGISTRY.get_sample_value("zerolens_web_model_retries_total", {"reason": reason}) or 0.0


@pytest.fixture(autouse=True)
def fresh_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty per-process registry: a port reused by a later test meets a tier that knows nothing yet."""
    monkeypatch.setattr(tiers, "_tiers", {})


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def stubs() -> Iterator[Callable[..., StubServer]]:
    started: list[StubServer] = []

    def start(port: int, script: Script = answer, host: str = "127.0.0.1") -> StubServer:
        started.append(StubServer(port, script, host).start())
        return started[-1]

    yield start
    for stub in started:
        stub.stop()


@pytest.fixture
def make_client(context: zmq.Context) -> Iterator[Callable[..., ModelClient]]:
    clients: list[ModelClient] = []

    def make(resolver: Any = None, **settings: Any) -> ModelClient:
        # the stub is a plain ROUTER: CurveZMQ has tests of its own (tests/drills/test_curve.py)
        overrides = {"heartbeat_ivl_ms": 200, "zmq_security": "plaintext", **settings}
        cfg = load(WebConfig, overrides=overrides, environ={})
        client = ModelClient(cfg, context) if resolver is None else ModelClient(cfg, context, resolver)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_happy_path_returns_the_matching_reply(stubs, make_client, unused_tcp_port: int) -> None:
    stub = stubs(unused_tcp_port)
    client = make_client(
        model_server=f"127.0.0.1:{unused_tcp_port}", attempt_timeout_ms=3000, request_timeout_ms=3000
    )
    before_ms = time.time() * 1000
    reply = client.classify(b"\xff\xd8\xffphoto", top_k=3, request_id="rid-1")
    assert reply.ok and reply.request_id == "rid-1" and reply.model == "stub"
    assert [p.index for p in reply.predictions] == [0, 1, 2]
    (request,) = stub.requests
    assert bytes(request.image) == b"\xff\xd8\xffphoto" and request.top_k == 3
    assert before_ms + 2900 <= request.deadline_ms <= time.time() * 1000 + 3000  # absolute, whole budget


def test_a_server_on_an_ipv6_address_is_reached(stubs, make_client, unused_tcp_port: int) -> None:
    stubs(unused_tcp_port, host="::1")
    client = make_client(
        model_server=f"tcp://[::1]:{unused_tcp_port}", attempt_timeout_ms=3000, request_timeout_ms=3000
    )
    assert client.classify(b"photo", top_k=1, request_id="v6").ok


def test_a_try_ends_when_its_only_server_goes_away(stubs, make_client, unused_tcp_port: int) -> None:
    stub = stubs(unused_tcp_port, ignore)
    client = make_client(
        model_server=f"127.0.0.1:{unused_tcp_port}", attempt_timeout_ms=20_000, request_timeout_ms=30_000
    )
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(client.classify, b"photo", 1)
        wait_until(lambda: len(stub.requests) == 1)
        stub.stop()  # a server that drained and closed: the request it held will never be answered
        with pytest.raises(ModelUnavailable):
            outcome.result()
    assert time.monotonic() - started < 10  # not the 20 s the try may last: the connection told us
    assert client.tier.down_since is not None  # the process's other threads now fail fast too


def test_silent_try_is_resent_on_a_new_socket(stubs, make_client, unused_tcp_port: int) -> None:
    stub = stubs(unused_tcp_port, lambda request, n: [] if n == 0 else answer(request, n))
    client = make_client(
        model_server=f"tcp://127.0.0.1:{unused_tcp_port}",
        attempt_timeout_ms=200,
        retries=2,
        request_timeout_ms=3000,
    )
    before = retries_counted("timeout")
    reply = client.classify(b"img", top_k=1)
    assert reply.ok
    assert [r.request_id for r in stub.requests] == [reply.request_id] * 2  # the same request, resent
    assert stub.peers[0] != stub.peers[1]  # from a rebuilt socket (Lazy Pirate)
    assert retries_counted("timeout") == before + 1


def test_client_gives_up_after_retries(stubs, make_client, unused_tcp_port: int) -> None:
    stub = stubs(unused_tcp_port, ignore)
    client = make_client(
        model_server=f"127.0.0.1:{unused_tcp_port}",
        attempt_timeout_ms=150,
        retries=2,
        request_timeout_ms=5000,
    )
    with pytest.raises(ModelUnavailable, match="after 3 tries"):
        client.classify(b"img", top_k=1)
    assert len(stub.requests) == 3  # three tries, inside the 5 s budget


def test_deadline_passed_raises_timeout(stubs, make_client, unused_tcp_port: int) -> None:
    stub = stubs(unused_tcp_port, ignore)
    client = make_client(
        model_server=f"127.0.0.1:{unused_tcp_port}", attempt_timeout_ms=300, retries=5, request_timeout_ms=500
    )
    with pytest.raises(ModelTimeout, match="within 500 ms"):
        client.classify(b"img", top_k=1)
    assert len(stub.requests) == 2  # stopped at the deadline, not after six tries


def test_late_reply_to_an_earlier_request_is_discarded(stubs, make_client, unused_tcp_port: int) -> None:
    def script(request: Request, n: int) -> list[tuple[float, Any]]:
        if n == 0:  # the ping is answered twice: the duplicate arrives during the next call
            return [(0.0, ok(request)), (0.05, ok(request, model="late"))]
        garbage = [b"", b"ZL99", b"{}"]  # another protocol version: dropped too
        return [(0.0, garbage), (0.2, ok(request))]

    stubs(unused_tcp_port, script)
    client = make_client(model_server=f"127.0.0.1:{unused_tcp_port}", attempt_timeout_ms=2000)
    first = client.ping()
    reply = client.classify(b"img", top_k=2)
    assert reply.ok and reply.request_id != first.request_id and reply.model == "stub"


def test_overloaded_fails_fast_with_one_server(stubs, make_client, unused_tcp_port: int) -> None:
    stub = stubs(unused_tcp_port, overloaded)
    client = make_client(model_server=f"127.0.0.1:{unused_tcp_port}", retries=2)
    before = retries_counted("overloaded")
    reply = client.classify(b"img", top_k=1)
    assert reply.status is Status.OVERLOADED  # the first answer is the answer
    assert len(stub.requests) == 1  # never resent into the same full server
    assert retries_counted("overloaded") == before


def test_overloaded_is_not_resent_when_the_other_server_is_down(
    stubs, make_client, unused_tcp_port_factory
) -> None:
    up, down = unused_tcp_port_factory(), unused_tcp_port_factory()
    stub = stubs(up, overloaded)
    client = make_client(model_server=f"tcp://127.0.0.1:{up},tcp://127.0.0.1:{down}", retries=2)
    reply = client.classify(b"img", top_k=1)
    assert reply.status is Status.OVERLOADED
    assert len(stub.requests) == 1  # two endpoints, but only one connected: a resend would reach it again
    assert client.servers_up() == 1


def test_retry_on_overload_reaches_another_server(stubs, make_client, unused_tcp_port_factory) -> None:
    def busy(request: Request, n: int) -> list[tuple[float, Any]]:
        return answer(request, n) if request.op == OP_PING else overloaded(request, n)

    first, second = unused_tcp_port_factory(), unused_tcp_port_factory()
    busy_stub, idle_stub = stubs(first, busy), stubs(second, answer)
    client = make_client(model_server=f"tcp://127.0.0.1:{first},tcp://127.0.0.1:{second}", retries=1)
    deadline = time.monotonic() + 5
    while not (busy_stub.requests and idle_stub.requests) and time.monotonic() < deadline:
        client.ping()  # until both connections are up, so round-robin alternates between them
    reply = client.classify(b"img", top_k=1)
    assert reply.ok
    assert [r.op for r in idle_stub.requests][-1] == "classify"


def test_no_server_fails_within_budget(make_client, unused_tcp_port: int) -> None:
    client = make_client(
        model_server=f"127.0.0.1:{unused_tcp_port}",
        attempt_timeout_ms=200,
        retries=1,
        request_timeout_ms=2000,
    )
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="no model server reachable"):
        client.classify(b"img", top_k=1)
    # the first try waits its 0.2 s for a connection; then the tier is known down and the retry is brief
    assert 0.2 <= time.monotonic() - start < 0.8


def test_one_outage_is_discovered_once_per_process(stubs, make_client, unused_tcp_port: int) -> None:
    settings = {"model_server": f"127.0.0.1:{unused_tcp_port}", "attempt_timeout_ms": 2000, "retries": 1}
    first, second = make_client(**settings), make_client(**settings)  # two threads' clients, two sockets
    with pytest.raises(ModelUnavailable, match="reachable"):
        first.classify(b"img", top_k=1)  # waits once for a connection, then knows (no retry: none would help)
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="reachable"):
        second.classify(b"img", top_k=1)  # its socket never failed, but the process knows the tier is down
    assert time.monotonic() - start < tiers.CONNECT_WAIT_MS / 1000  # one brief try, no wait of its own
    stubs(unused_tcp_port)
    deadline = time.monotonic() + 5  # the sockets reconnect by themselves (backing off to a second)
    for client in (first, second):
        while True:
            try:
                assert client.classify(b"img", top_k=1).ok
                break
            except ModelUnavailable:
                assert time.monotonic() < deadline, "the client did not recover after the server came back"


def test_waiting_threads_stop_when_another_finds_the_tier_down(
    make_client, unused_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiers, "CONNECT_WAIT_MS", 5_000)  # alone, a thread would wait this long
    settings = {"model_server": f"127.0.0.1:{unused_tcp_port}", "retries": 0}
    waiting = make_client(**settings, attempt_timeout_ms=3000, request_timeout_ms=3000)
    finder = make_client(**settings, attempt_timeout_ms=200, request_timeout_ms=200)
    outcome: list[float] = []

    def wait_for_a_server() -> None:
        start = time.monotonic()
        with pytest.raises(ModelUnavailable):
            waiting.classify(b"img", top_k=1)  # alone it would wait CONNECT_WAIT_MS
        outcome.append(time.monotonic() - start)
        waiting.close()  # in the thread that used the socket

    thread = threading.Thread(target=wait_for_a_server)
    thread.start()
    with pytest.raises(ModelUnavailable):
        finder.classify(b"img", top_k=1)  # gives up after 0.2 s and tells the process
    thread.join(5)
    assert outcome and outcome[0] < 2.0


def test_a_reply_gone_between_poll_and_recv_is_waited_for(make_client, unused_tcp_port: int) -> None:
    class Flaky:
        """A socket whose first message, reported by poll, is gone by the recv (its pipe closed)."""

        def __init__(self, frames: list[bytes]) -> None:
            self.frames, self.recvs = frames, 0

        def poll(self, timeout: float, flags: int) -> int:
            return zmq.POLLIN

        def recv_multipart(self, flags: int) -> list[bytes]:
            self.recvs += 1
            if self.recvs == 1:
                raise zmq.Again()
            return self.frames

    client = make_client(model_server=f"127.0.0.1:{unused_tcp_port}")
    socket = Flaky(protocol.encode_reply(Reply("rid-7", Status.OK, model="stub")))
    reply = client._receive(socket, "rid-7", time.monotonic() + 1)
    assert reply is not None and reply.ok and socket.recvs == 2


def test_the_input_size_is_asked_once_per_process_until_forgotten(
    stubs, make_client, unused_tcp_port: int
) -> None:
    stub = stubs(unused_tcp_port, sized)
    first, second = (make_client(model_server=f"127.0.0.1:{unused_tcp_port}") for _ in range(2))
    assert first.input_spec() == second.input_spec() == (224, 0.875)
    assert [r.op for r in stub.requests] == [OP_PING]  # the second thread knows it from the first
    first.forget_input_spec()  # as when pixels sent at that size are refused: the model changed
    assert second.input_spec() == (224, 0.875)
    assert [r.op for r in stub.requests] == [OP_PING, OP_PING]  # forgotten for the whole process


def test_server_started_after_the_send_still_answers(
    stubs, make_client, unused_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiers, "CONNECT_WAIT_MS", 2_000)  # wait for the server as long as the try
    client = make_client(model_server=f"127.0.0.1:{unused_tcp_port}", attempt_timeout_ms=2000, retries=0)
    timer = threading.Timer(0.15, stubs, args=(unused_tcp_port,))
    timer.start()
    start = time.monotonic()
    try:
        reply = client.classify(b"img", top_k=1)
    finally:
        timer.join()
    assert reply.ok
    assert time.monotonic() - start < 1.9  # sent as soon as connected, not after the 2 s timeout


def test_ping_reports_the_model(stubs, make_client, unused_tcp_port: int) -> None:
    stub = stubs(unused_tcp_port)
    reply = make_client(model_server=f"127.0.0.1:{unused_tcp_port}").ping(timeout_ms=1000)
    assert reply.ok and reply.model == "stub"
    assert stub.requests[0].op == OP_PING


def test_client_follows_the_resolved_addresses(stubs, make_client, unused_tcp_port: int) -> None:
    table = {"model.test": ["127.0.0.1"]}
    old, new = stubs(unused_tcp_port, host="127.0.0.1"), stubs(unused_tcp_port, host="127.0.0.2")
    client = make_client(
        resolver=lambda host, port: list(table[host]),
        model_server=f"model.test:{unused_tcp_port}",
        resolve_interval_s=0.05,
    )
    assert client.classify(b"img", top_k=1).ok
    table["model.test"] = ["127.0.0.2"]  # the pod moved
    time.sleep(0.1)
    start = time.monotonic()
    assert client.classify(b"img", top_k=1).ok
    assert time.monotonic() - start < 2.0  # not lost in the old connection (no 4 s attempt timeout)
    assert (len(old.requests), len(new.requests)) == (1, 1)
