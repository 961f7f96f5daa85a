"""Lazy Pirate DEALER client to the model servers, one socket per thread (clients.py hands them out).

What one thread learns about the model tier (it is down, it is full, its input size) is kept per process
in a TierState (tiers.py), so that every thread of the worker knows it at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from services import keys, protocol, tracing
from services.config import WebConfig
from services.protocol import OP_CLASSIFY, OP_PING, Reply, Request, Status
from services.web import discovery, metrics
from services.web.tiers import tier_state

log = logging.getLogger(__name__)
Shape = tuple[int, int, int]  # rgb8 pixels: height, width, channels

SEND_POLL_MS = 20  # while no server is connected yet, re-check this often (connects take a few ms)
LOST_CHECK_MS = 100  # while a reply is awaited, re-check this often that some server is still connected
RECONNECT_IVL_MS = 100  # first reconnect after a server vanished: soon, a restarted pod is back quickly
RECONNECT_IVL_MAX_MS = 1_000  # backoff cap: a SYN a second to a dead endpoint; a returning one waits ≤ 1 s
SOCKET_HWM = 16  # one request in flight per socket; a deep queue would only hold stale work
MAX_REPLY_BYTES = 1 << 20  # replies are a few KB; a bigger message is garbage and cuts the connection


class ModelUnavailable(Exception):
    """No model server answered within the tries allowed (HTTP 503)."""


class ModelTimeout(Exception):
    """The request's overall deadline passed before any server answered (HTTP 504)."""


@dataclass
class _Flight:
    """One request on its way: its frames and budget, and what its tries have met so far."""

    request: Request
    frames: list
    start: float  # monotonic, taken before the request's absolute deadline was set
    timeout_ms: int
    attempt_s: float
    tries: int
    sent: bool = False  # a try reached a server (False: none was connected)
    overloaded: Reply | None = None  # the latest OVERLOADED reply: the answer when no other server takes it
    elsewhere: int = 0  # tries after OVERLOADED, each to the next connected server
    failure: str = ""  # why the previous try failed: timeout or overloaded

    @property
    def deadline(self) -> float:
        return self.start + self.timeout_ms / 1000

    def record(self, outcome: str) -> None:
        """Count the call's outcome and its time in the metrics."""
        metrics.record_call(self.request.op, outcome, time.monotonic() - self.start)


def _request(
    op: str, image: bytes, top_k: int, request_id: str | None, timeout_ms: int, shape: Shape | None
) -> Request:
    """A request with an absolute deadline (the server refuses stale work); pixels when it has a shape."""
    return Request(
        request_id=request_id or protocol.new_request_id(),
        deadline_ms=protocol.deadline_after_ms(timeout_ms),
        op=op,
        top_k=top_k,
        image=image,
        encoding=protocol.ENCODING_IMAGE if shape is None else protocol.ENCODING_RGB8,
        shape=shape,
    )


class ModelClient:
    """Lazy Pirate: poll with timeouts, rebuild the socket after a silent try, resend, give up loudly."""

    def __init__(
        self,
        cfg: WebConfig,
        context: zmq.Context,
        resolver: discovery.Resolver = discovery.resolve_host,
    ) -> None:
        self.cfg = cfg
        self._context = context
        self._endpoints = discovery.Endpoints(cfg.model_server, cfg.resolve_interval_s, resolver)
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # the socket's connection events
        self._connected: set[str] = set()  # endpoints connect() was called for
        self._up: set[str] = set()  # endpoints with a finished handshake: where a send can go
        self.tier = tier_state(cfg.model_server)

    # --- socket lifecycle ---------------------------------------------------------------------------

    def _open(self) -> zmq.Socket:
        curve = keys.client_keys(self.cfg)  # read once per process
        client = self._context.socket(zmq.DEALER)
        if curve is not None:
            keys.make_client(client, curve)  # the model server admits only keys on its allow-list
        # Never keep unsent requests once we give up: close() and context.term() must not block on them.
        client.linger = 0
        client.ipv6 = True  # discovery hands out IPv6 addresses too; without it libzmq never connects to them
        # Queue only for servers whose connection is complete: with the default, requests sent while a
        # server is down wait in a pipe and are delivered (stale) when it returns; here send fails fast.
        client.immediate = 1
        # ZMTP heartbeats: without them a silent network cut is invisible until TCP gives up (~2 h).
        client.heartbeat_ivl = self.cfg.heartbeat_ivl_ms
        client.heartbeat_timeout = 3 * self.cfg.heartbeat_ivl_ms
        client.heartbeat_ttl = 3 * self.cfg.heartbeat_ivl_ms  # asks the server to drop us just as fast
        client.sndhwm = SOCKET_HWM
        client.rcvhwm = SOCKET_HWM
        client.reconnect_ivl = RECONNECT_IVL_MS
        client.reconnect_ivl_max = RECONNECT_IVL_MAX_MS
        client.maxmsgsize = MAX_REPLY_BYTES
        # Which servers the socket is connected to, so a retry after OVERLOADED goes only where the DEALER
        # would send it elsewhere. With IMMEDIATE=1 a pipe joins the round-robin when its handshake succeeds.
        self._monitor = client.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._connected, self._up = set(), set()
        return client

    def _socket_ready(self) -> zmq.Socket:
        """This thread's socket, connected to every current endpoint (re-resolving names when due)."""
        wanted = self._endpoints.get()
        to_connect, to_disconnect = discovery.diff(self._connected, wanted)
        if to_disconnect:
            # zmq's disconnect() is asynchronous: the old pipe can still take the next send, which is then
            # lost and costs a whole attempt. Endpoints change rarely (pods come and go), so rebuild instead.
            log.info("model servers gone: %s; reconnecting to %s", ", ".join(to_disconnect), sorted(wanted))
            self._reset()
        if self._socket is None:
            self._socket = self._open()
            to_connect = sorted(wanted)
        for endpoint in to_connect:
            self._socket.connect(endpoint)
            self._connected.add(endpoint)
        return self._socket

    def _reset(self) -> None:
        """Lazy Pirate: drop the socket (and whatever is queued in it) so the next try starts clean."""
        if self._socket is not None:
            self._socket.disable_monitor()
            if self._monitor is not None:
                self._monitor.close(linger=0)
                self._monitor = None
            self._socket.close(linger=0)
            self._socket = None
            self._connected, self._up = set(), set()

    def servers_up(self) -> int:
        """How many servers this thread's socket can send to now (handshake done, not disconnected since)."""
        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            endpoint = event["endpoint"].decode()
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._up.add(endpoint)
            else:
                self._up.discard(endpoint)
        return len(self._up & self._connected)

    def close(self) -> None:
        """Close this thread's socket; the next call opens a new one."""
        self._reset()

    # --- one call -----------------------------------------------------------------------------------

    def _send(self, client: zmq.Socket, flight: _Flight, attempt_end: float) -> bool:
        """Send before attempt_end; False (and logged) when no server was connected in time (IMMEDIATE=1)."""
        start = time.monotonic()
        tier = self.tier
        while True:
            try:
                client.send_multipart(flight.frames, flags=zmq.NOBLOCK, copy=False)
                tier.down_since = None
                flight.sent = True
                return True
            except zmq.Again:
                # Re-read each round: another thread may find the tier down while this one waits.
                left_ms = (min(attempt_end, start + tier.connect_wait_s()) - time.monotonic()) * 1000
                if left_ms <= 0:
                    tier.mark_down(start)
                    where = sorted(self._connected) or "-"
                    log.warning(
                        "request %s: no model server connected at %s", flight.request.request_id, where
                    )
                    return False
                client.poll(min(left_ms, SEND_POLL_MS), zmq.POLLOUT)

    def _receive(self, client: zmq.Socket, request_id: str, attempt_end: float) -> Reply | None:
        """The reply to request_id; None at attempt_end, or once no server is connected (it is lost)."""
        while True:
            left_ms = (attempt_end - time.monotonic()) * 1000
            if left_ms <= 0:
                return None
            if not client.poll(min(math.ceil(left_ms), LOST_CHECK_MS), zmq.POLLIN):  # whole ms: not early
                if self._monitor is not None and self.servers_up() == 0:
                    return None
                continue
            try:
                frames = client.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                # poll can report a message that is gone by the recv (its pipe closed in between, as when
                # a server drains and disconnects): nothing has arrived yet, keep waiting.
                continue
            try:
                reply = protocol.decode_reply(frames)
            except protocol.ProtocolError as exc:
                log.warning("request %s: discarding a malformed reply: %s", request_id, exc)
                continue
            if reply.request_id != request_id:
                # A DEALER may hand back a late answer to a request we already gave up on.
                log.info("request %s: discarding a late reply to %s", request_id, reply.request_id)
                continue
            return reply

    def call(
        self,
        op: str,
        image: bytes = b"",
        top_k: int = 5,
        request_id: str | None = None,
        timeout_ms: int | None = None,
        attempt_timeout_ms: int | None = None,
        retries: int | None = None,
        shape: Shape | None = None,
    ) -> Reply:
        """Send one request with retries within its deadline and return the matching reply.

        A non-OK reply is returned, not raised. OVERLOADED is retried only on another server.
        :raise ModelUnavailable: no server answered within the tries allowed.
        :raise ModelTimeout: the overall deadline passed while waiting for an answer.
        """
        cfg = self.cfg
        timeout_ms = cfg.request_timeout_ms if timeout_ms is None else timeout_ms
        attempt_ms = cfg.attempt_timeout_ms if attempt_timeout_ms is None else attempt_timeout_ms
        tries = 1 + (cfg.retries if retries is None else retries)
        start = time.monotonic()
        request = _request(op, image, top_k, request_id, timeout_ms, shape)
        # Readiness pings come every few seconds: as traces they would bury the classifications.
        if tracing.tracer() is None or op == OP_PING:
            return self._call(request, start, timeout_ms, attempt_ms, tries)
        attributes = {"rpc.system": "zerolens", "rpc.method": op, "zerolens.request_id": request.request_id}
        with tracing.client_span(f"zerolens.model/{op}", attributes) as (span, traceparent):
            request = dataclasses.replace(request, traceparent=traceparent)  # the server's spans: children
            reply = self._call(request, start, timeout_ms, attempt_ms, tries)
            span.set_attribute("zerolens.status", reply.status.value)
            return reply

    def _call(self, request: Request, start: float, timeout_ms: int, attempt_ms: int, tries: int) -> Reply:
        """call()'s tries for one request, `start` being time.monotonic() before its deadline was set."""
        frames = protocol.encode_request(request)
        flight = _Flight(request, frames, start, timeout_ms, attempt_ms / 1000, tries)
        for attempt in range(flight.tries):
            now = time.monotonic()
            if now >= flight.deadline:
                break
            if flight.failure:
                metrics.record_retry(flight.failure)  # counted only when another try really happens
            attempt_end = min(now + flight.attempt_s, flight.deadline)
            client = self._socket_ready()
            if not self._send(client, flight, attempt_end):
                break  # no retry: the socket reconnects in the background, a try now would find it unchanged
            reply = self._receive(client, flight.request.request_id, attempt_end)
            if reply is None:
                self._silent(flight, attempt)
                if time.monotonic() < attempt_end:  # no server is connected any more: 503 now, no resend
                    self.tier.mark_down(time.monotonic())  # the process's other threads fail fast too
                    break
                continue
            if reply.status is not Status.OVERLOADED:
                flight.record(reply.status.value.lower())
                return reply
            if not self._retry_elsewhere(flight, reply):
                break
        return self._give_up(flight)

    def _silent(self, flight: _Flight, attempt: int) -> None:
        """Lazy Pirate after a try that got no reply: drop the socket, so a resend starts on a new one."""
        rid = flight.request.request_id
        log.warning("request %s: no reply (try %d of %d)", rid, attempt + 1, flight.tries)
        self._reset()
        flight.failure = "timeout"

    def _retry_elsewhere(self, flight: _Flight, reply: Reply) -> bool:
        """After an OVERLOADED reply: whether a server this request has not met yet can take a resend."""
        log.info("request %s: overloaded (%s)", flight.request.request_id, reply.error)
        flight.overloaded, flight.failure = reply, "overloaded"
        # The DEALER round-robins over the servers it is connected to: with n up, the next n - 1
        # sends reach the others. Resending to the same full server would only add to its load.
        if flight.elsewhere < self.servers_up() - 1:
            flight.elsewhere += 1
            return True
        return False

    def _give_up(self, flight: _Flight) -> Reply:
        """The outcome with no try left: the last OVERLOADED reply, else ModelTimeout or ModelUnavailable."""
        if flight.overloaded is not None:
            flight.record("overloaded")
            return flight.overloaded
        if flight.sent and time.monotonic() >= flight.deadline:
            flight.record("timeout")
            raise ModelTimeout(f"no model server answered within {flight.timeout_ms} ms")
        flight.record("unavailable")
        if not flight.sent:
            where = ", ".join(sorted(self._endpoints.current)) or f"{self.cfg.model_server} (not resolved)"
            raise ModelUnavailable(f"no model server reachable at {where}")
        raise ModelUnavailable(f"no model server answered after {flight.tries} tries")

    def classify(
        self,
        image: bytes,
        top_k: int,
        request_id: str | None = None,
        shape: Shape | None = None,
        timeout_ms: int | None = None,
    ) -> Reply:
        """Classify one upload, or (with `shape`) pixels already decoded to the model's input; see call().

        `timeout_ms` is what is left of the request's deadline (default: request_timeout_ms).
        """
        return self.call(
            OP_CLASSIFY, image=image, top_k=top_k, request_id=request_id, shape=shape, timeout_ms=timeout_ms
        )

    def ping(self, timeout_ms: int | None = None) -> Reply:
        """One quick ping (no retries) for readiness; see call() for errors."""
        budget = self.cfg.ready_timeout_ms if timeout_ms is None else timeout_ms
        reply = self.call(OP_PING, timeout_ms=budget, attempt_timeout_ms=budget, retries=0)
        if reply.ok and reply.input_size:
            self.tier.input_spec = (reply.input_size, reply.crop_fraction)
        return reply

    def input_spec(self) -> tuple[int, float] | None:
        """The model's (input size, crop fraction), asked once per process; None when unknown for now."""
        return self.tier.known_input_spec(self._ping_quietly)

    def _ping_quietly(self) -> None:
        """Ping for the model's input size; no answer leaves it unknown."""
        with contextlib.suppress(ModelUnavailable, ModelTimeout):
            self.ping()

    def forget_input_spec(self) -> None:
        """Drop the model's input size for the whole process: the next thread that needs it asks again."""
        self.tier.input_spec = None
