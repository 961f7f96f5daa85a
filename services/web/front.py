"""gunicorn's gthread worker, with each request read by the worker's event loop before a thread serves it.

gthread hands a connection to a thread as soon as its first byte arrives, and the thread then blocks until
the client has sent the headers and the body. A client that sends them slowly (slowloris, a slow POST)
holds that thread for as long as it likes; a handful of them stop the worker. Here the selector loop reads
the request head and body without blocking, under deadlines: a thread only ever gets a request that is
complete, or one it must refuse (over a size limit, malformed), and parses it from memory with gunicorn's
own parser. So a thread's time goes to decoding and classifying, never to waiting for a client.

Deadlines: the head must arrive within `client_header_timeout_s` of the connection (or, on a kept-alive
connection, of its first byte); the body may pause at most `client_body_timeout_s` between reads. A client
that misses one gets 408 and is closed. The loop holds at most `max_upload_bytes` of body per connection
(bigger bodies go to a thread at once to be refused with 413), and gunicorn's `worker_connections` bounds
the connections.

Overload: a complete request that would wait for a thread longer than ¾ of `max_queue_wait_ms` is answered
503 by the loop at once (see BufferingThreadWorker.__init__), so a flood is refused cheaply and the requests
that are taken stay fresh.

Stopping (SIGTERM): the worker first accepts every connection already waiting in the kernel's accept queue
and closes its listening sockets while their queues are empty (listener.py) — closing a listener resets the
connections still queued in it, while a connection attempted after the close is refused before it is
established — then serves what it holds.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import re
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from gunicorn.http.unreader import SocketUnreader, Unreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from services.config import WebConfig, load
from services.web.framing import CONTINUE, INCOMPLETE, UNFRAMED, Reading, scan, wants_continue
from services.web.listener import close_when_empty

REQUEST_START = "zerolens.request_start"  # environ: time.time() when the request's first byte arrived
DRAINING = "zerolens.draining"  # environ: True once the worker is stopping (readiness turns false)
# app.extensions: `door(method, path)`, asked by the loop for each complete request before it waits for a
# thread. False: refuse it now (503 from the loop, so a refusal never waits behind the requests queued for a
# thread); None: nothing to say; anything else (with a close()) is held for the request as environ[ADMITTED],
# and closed once it has been answered (if the app has not closed it first).
DOOR = "zerolens.door"
ADMITTED = "zerolens.admitted"
READ_SIZE = 256 * 1024
ACCEPT_BATCH = 64  # connections taken from the accept queue per readiness event
TAKE_EWMA = 0.1  # weight of the newest interval in the moving average of the pool's pace
_TIMEOUT_BODY = b"the request was not received in time\n"
_UNFRAMED_BODY = b"the body's length cannot be known: chunked must be the last transfer coding\n"
_UNFRAMED = (
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_UNFRAMED_BODY), _UNFRAMED_BODY)
)
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def _count_dropped(stage: str) -> None:
    # imported here: gunicorn's master loads this module before prometheus-client may pick its mode
    from services.web import metrics

    metrics.record_dropped(stage)


def _count_shed(reason: str) -> None:
    from services.web import metrics  # see _count_dropped

    metrics.record_shed(reason)


BUSY_MESSAGE = "the service is busy; please try again in a moment"  # the loop's own 503s, told apart by it
_BUSY_BODY = json.dumps(
    {"error": {"code": 503, "status": "SERVICE_UNAVAILABLE", "message": BUSY_MESSAGE}}
).encode()
_BUSY_BODY_OIP = json.dumps({"error": BUSY_MESSAGE}).encode()  # the Open Inference Protocol's error body
# The caller's X-Request-ID in a request head, when it is one the app would take (protocol.REQUEST_ID).
_REQUEST_ID = re.compile(rb"\r\nx-request-id:[ \t]*([A-Za-z0-9._-]{1,64})[ \t]*\r\n", re.IGNORECASE)


def busy_reply(head: bytes, path: bytes, retry_after_s: int) -> bytes:
    """The 503 the loop answers while shedding: the API's error format (the protocol's under /v2), and the
    request's id as the app would give it."""
    found = _REQUEST_ID.search(head)
    request_id = found.group(1) if found else uuid.uuid4().hex.encode()
    body = _BUSY_BODY_OIP if path == b"/v2" or path.startswith(b"/v2/") else _BUSY_BODY
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %d\r\n"
        b"X-Request-ID: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (retry_after_s, request_id, len(body), body)
    )


def _target_path(head: bytes) -> bytes:
    """The path of a request line (or of the head it starts): its target up to the query."""
    line = head.partition(b"\r\n")[0]
    return line.partition(b" ")[2].partition(b" ")[0].partition(b"?")[0]


class BufferedUnreader(Unreader):
    """gunicorn's parser reads the bytes the loop read first, then the socket, in the socket's portions.

    Handing the parser the whole request at once (`unread`) makes its chunked-body reader copy the rest of
    the buffer for every chunk: quadratic in the body. Portions as a socket gives them keep it linear.
    """

    def __init__(self, data: bytearray, source: Unreader) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._pos = 0
        # a kept-alive connection gets a new one per request: wrap the socket's, never a wrapper
        self.source: SocketUnreader = source.source if isinstance(source, BufferedUnreader) else source

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self._pos >= len(self._data):
            return self.source.chunk(size_hint)
        size = self.source.mxchunk  # the same portions SocketUnreader asks the socket for
        if size_hint and size_hint > size:
            size = min(size_hint, SocketUnreader.max_body_chunk)
        piece = bytes(self._data[self._pos : self._pos + size])
        self._pos += len(piece)
        return piece

    def take_buffered(self) -> bytes:
        self.spill()
        return super().take_buffered()

    def spill(self) -> None:
        """Move what is left of the loop's bytes (a pipelined next request) behind gunicorn's own buffer,
        where the worker looks for read-ahead after a request."""
        if self._pos < len(self._data):
            self.buf.seek(0, io.SEEK_END)
            self.buf.write(self._data[self._pos :])
            self._pos = len(self._data)


class _Handling(threading.local):
    """What the loop learnt about the request this thread handles."""

    start: float | None = None
    admitted: Any = None


class BufferingThreadWorker(ThreadWorker):
    """gunicorn's gthread worker whose event loop reads whole requests before handing them to threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = load(WebConfig)
        self.header_timeout_s = cfg.client_header_timeout_s
        self.body_timeout_s = cfg.client_body_timeout_s
        self.max_body = cfg.max_upload_bytes
        # gunicorn's parser refuses heads over its own limits (414/431); read at most that much here
        fields = self.cfg.limit_request_fields * (self.cfg.limit_request_field_size + 2)
        self.max_head = self.cfg.limit_request_line + fields
        self.reading: dict[TConn, Reading] = {}
        self._door: Callable[[bytes, bytes], Any] | None = None  # the app's (DOOR), once loaded
        self._handling = _Handling()
        # Shedding at the door: a new request would wait about (requests waiting) × (time between two
        # requests taken by threads while some wait), by Little's law. When that passes ¾ of
        # max_queue_wait_ms it would likely be refused later anyway (views.py refuses what waited the whole
        # of it), after holding memory and a thread's time: refuse it now, from the loop, in microseconds.
        # Closed-loop clients stay below it up to many times the threads; an open flood does not.
        self.door_wait_s = cfg.max_queue_wait_ms / 1000 * 0.75
        self.retry_after_s = cfg.retry_after_s
        self._queue_lock = threading.Lock()
        self._waiting = 0  # requests handed to the pool, not yet taken by a thread
        self._taken_at = 0.0  # when a thread last took one
        self._taken_busy = False  # whether others were still waiting then (an idle gap is not service time)
        self._take_interval_s = 0.0  # moving average of the time between takes while requests wait

    # --- the app sees when its request started, and whether the worker is stopping ---------------------

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi
        self._door = getattr(app, "extensions", {}).get(DOOR)

        def wsgi(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            environ[REQUEST_START] = self._handling.start or time.time()
            environ[ADMITTED] = self._handling.admitted
            environ[DRAINING] = not self.alive
            return app(environ, start_response)

        self.wsgi = wsgi

    # --- reading in the loop ------------------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client, addr = listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    raise
                return
            self.nr_conns += 1
            conn = TConn(self.cfg, client, addr, listener.getsockname())  # sets the socket non-blocking
            self._read(conn, time.monotonic() + self.header_timeout_s)
            if self.nr_conns >= self.worker_connections:
                return

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection has a new request: read it in the loop too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read(conn, time.monotonic() + self.header_timeout_s)
        self._on_readable(conn, client)

    def enqueue_req(self, conn: TConn) -> None:
        """Hand a complete request to a thread; bytes of a next request read ahead go through the loop."""
        if getattr(conn, "buffered", None) is None and conn.parser is not None:
            ahead = conn.parser.unreader.take_buffered()
            if ahead:  # pipelined: the rest of that request may still be on its way
                conn.sock.setblocking(False)
                self._read(conn, time.monotonic() + self.header_timeout_s)
                self._received(conn, self.reading[conn], ahead)
                return
        super().enqueue_req(conn)

    def _read(self, conn: TConn, deadline: float) -> None:
        self.reading[conn] = Reading(deadline)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: TConn, client: socket.socket) -> None:
        reading = self.reading.get(conn)
        if reading is None:
            return
        try:
            data = client.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before sending a whole request
            self._forget(conn)
            self._close(conn)
            if reading.buf:
                _count_dropped("incomplete")
            return
        self._received(conn, reading, data)

    def _received(self, conn: TConn, reading: Reading, data: bytes) -> None:
        if reading.first_byte_at is None:
            reading.first_byte_at = time.time()
        reading.buf += data
        state = scan(reading, self.max_head, self.max_body)
        if state == INCOMPLETE:
            if reading.head_end is not None:  # the body may pause, but not for long
                reading.deadline = time.monotonic() + self.body_timeout_s
                if wants_continue(reading):
                    with contextlib.suppress(OSError):  # a few bytes: the socket buffer takes them at once
                        conn.sock.send(CONTINUE)
            return
        self._forget(conn)
        if state == UNFRAMED:
            with contextlib.suppress(OSError):
                conn.sock.send(_UNFRAMED)
            self._close(conn)
            return
        shed = self._shed(conn, reading)
        if shed:
            head = bytes(reading.buf[: reading.head_end])
            reply = busy_reply(head, _target_path(head), self.retry_after_s)
            with contextlib.suppress(OSError):  # a few hundred bytes: the socket buffer takes them at once
                conn.sock.send(reply)
            _count_shed(shed)
            self._close(conn)
            return
        conn.data_ready = True  # skip gthread's own wait for the first byte
        conn.buffered = reading  # type: ignore[attr-defined]
        super().enqueue_req(conn)

    def _shed(self, conn: TConn, reading: Reading) -> str | None:
        """Why a complete request is refused at the door ("saturated": the app's door; "queue"), or None."""
        held = None
        if self._door is not None:
            line = bytes(reading.buf[: reading.buf.find(b"\r\n")])
            held = self._door(line.partition(b" ")[0], _target_path(line))
            if held is False:
                return "saturated"
        with self._queue_lock:
            queue_full = self._waiting * self._take_interval_s > self.door_wait_s
            if not queue_full:
                self._waiting += 1
        if queue_full:
            if held is not None:
                held.close()
            return "queue"
        conn.admitted = held  # type: ignore[attr-defined]
        return None

    def _forget(self, conn: TConn) -> None:
        self.reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _close(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Answer 408 to clients that did not send their request in time (and close silent ones)."""
        super().murder_pending()
        now = time.monotonic()
        late = [conn for conn, reading in self.reading.items() if reading.deadline <= now]
        for conn in late:
            reading = self.reading[conn]
            self._forget(conn)
            if reading.buf:
                with contextlib.suppress(OSError):  # non-blocking, best effort: the client is slow
                    conn.sock.send(_REQUEST_TIMEOUT)
                _count_dropped("too_slow")
            self._close(conn)

    # --- serving in a thread ------------------------------------------------------------------------

    def handle(self, conn: TConn) -> Any:
        reading: Reading | None = getattr(conn, "buffered", None)
        admitted, conn.admitted = getattr(conn, "admitted", None), None  # type: ignore[attr-defined]
        conn.buffered = None  # type: ignore[attr-defined]
        if reading is not None:
            with self._queue_lock:
                self._waiting -= 1
                now = time.monotonic()
                if self._taken_busy:
                    self._take_interval_s += TAKE_EWMA * (now - self._taken_at - self._take_interval_s)
                self._taken_at, self._taken_busy = now, self._waiting > 0
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader = BufferedUnreader(reading.buf, conn.parser.unreader)
            self._handling.start = reading.first_byte_at
        self._handling.admitted = admitted
        try:
            return super().handle(conn)
        finally:
            self._handling.start = self._handling.admitted = None
            if admitted is not None:
                admitted.close()
            if conn.parser is not None and isinstance(conn.parser.unreader, BufferedUnreader):
                conn.parser.unreader.spill()

    # --- stopping -----------------------------------------------------------------------------------

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.setblocking(False)
                close_when_empty(listener, partial(self._accept_waiting, listener))

    def _accept_waiting(self, listener: socket.socket) -> bool:
        """Take what waits in the accept queue; whether the worker could take more."""
        self.accept(listener)
        return self.nr_conns < self.worker_connections
