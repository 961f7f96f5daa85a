"""Inproc worker: reads requests from the proxy's backend, hands them to the pipeline, sends the replies.

A worker never blocks on inference: replies finished on decoder or batcher threads are queued in its
outbox and it is woken through a pipe, because a ZeroMQ socket may only be used by the thread that owns it.
So a couple of workers keep any number of requests in flight.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

import zmq

from services import logs, protocol
from services.model.metrics import ServerMetrics
from services.model.pipeline import Pipeline
from services.protocol import Reply, Request, Status

log = logging.getLogger(__name__)

POLL_MS = 100  # how often an idle worker checks its stop flag
MAX_FRAMES = 16  # a request has 4 after the envelope; more is garbage


class Worker(threading.Thread):
    """One DEALER on the inproc backend; socket I/O only, so two or three are plenty."""

    def __init__(
        self,
        index: int,
        context: zmq.Context,
        backend: str,
        pipeline: Pipeline,
        metrics: ServerMetrics,
        max_message_bytes: int,
    ) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self._context = context
        self._max_message_bytes = max_message_bytes
        self._backend = backend
        self._pipeline = pipeline
        self._metrics = metrics
        self._outbox: queue.SimpleQueue[tuple[list[Any], Reply, float]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _post(self, envelope: list[Any], reply: Reply, received: float) -> None:
        """Queue a reply from any thread and wake the worker."""
        self._outbox.put((envelope, reply, received))
        os.write(self._wake_w, b"\0")

    def run(self) -> None:
        worker = self._context.socket(zmq.DEALER)
        worker.linger = 0  # at shutdown everything was answered already; never block context.term()
        worker.connect(self._backend)
        poller = zmq.Poller()
        poller.register(worker, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                events = dict(poller.poll(POLL_MS))
                if worker in events:
                    self._receive(worker)
                if self._wake_r in events:
                    self._flush(worker)
            self._flush(worker)  # replies finished while stopping still go out
        finally:
            worker.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _receive(self, worker: zmq.Socket) -> None:
        for _ in range(64):  # drain what is waiting, but let replies out between bursts
            try:
                first = worker.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = self._recv_rest(worker, first)
            if frames:
                self._handle(frames, worker)

    def _recv_rest(self, worker: zmq.Socket, first: zmq.Frame) -> list[memoryview]:
        """The message's frames, or [] when it has too many frames or bytes (dropped and counted).

        libzmq has already buffered the whole message (ZMQ_MAXMSGSIZE bounds each frame, nothing bounds
        their number), so the frames are read one at a time and a flood is released as it is read rather
        than turned into a list of 100,000 frames first.
        """
        frames = [first.buffer]
        size, count, more = len(first), 1, first.more
        reason = ""
        while more:
            frame = worker.recv(copy=False)  # the rest is already here: messages arrive whole
            size, count, more = size + len(frame), count + 1, frame.more
            if reason:
                continue
            if count > MAX_FRAMES:
                reason = "frames"
            elif size > self._max_message_bytes:
                reason = "bytes"
            if reason:
                frames.clear()  # let go of what was kept so far
            else:
                frames.append(frame.buffer)
        if reason:
            self._metrics.malformed.inc()
            self._metrics.dropped.labels(reason).inc()
            log.info("%s: dropped a message of %d frames, %d bytes", self.name, count, size)
        return frames

    def _handle(self, frames: list[memoryview], worker: zmq.Socket) -> None:
        received = time.monotonic()
        envelope, body = protocol.split_envelope(frames)
        if not envelope:
            self._metrics.malformed.inc()  # nothing to route a reply by
            self._metrics.dropped.labels("envelope").inc()
            return
        try:
            request = protocol.decode_request(body)
        except protocol.ProtocolError as exc:
            self._metrics.malformed.inc()
            rid = protocol.peek_request_id(body)
            with logs.request_context(rid):
                log.info("%s: bad request: %s", self.name, exc)
            self._send(worker, envelope, Reply(rid, exc.status, str(exc)), received)
            return
        with logs.request_context(request.request_id):  # its lines here and in the pipeline carry its id
            self._dispatch(worker, envelope, request, received)

    def _dispatch(self, worker: zmq.Socket, envelope: list[Any], request: Request, received: float) -> None:
        """Hand a request to the pipeline; send what it answers at once, post what it answers later."""
        answered_now: list[Reply] = []  # refusals and pings, answered before handle() returns

        def answer(reply: Reply) -> None:
            if threading.current_thread() is self:
                answered_now.append(reply)  # sent below, without a round through the outbox
            else:  # from a decoder or the batcher thread: only this thread may use its socket
                self._post(envelope, reply, received)

        try:
            # The routing id the ROUTER prepended (first frame) names the peer for the per-client bound.
            self._pipeline.handle(request, received, answer, bytes(envelope[0]))
        except Exception:
            log.exception("%s: request %s failed", self.name, request.request_id)
            answered_now.append(Reply(request.request_id, Status.INTERNAL, "internal error"))
        for reply in answered_now:
            self._send(worker, envelope, reply, received)

    def _flush(self, worker: zmq.Socket) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                envelope, reply, received = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(worker, envelope, reply, received)

    def _send(self, worker: zmq.Socket, envelope: list[Any], reply: Reply, received: float) -> None:
        elapsed_s = time.monotonic() - received
        self._metrics.requests.labels(reply.status.value).inc()
        self._metrics.request_seconds.observe(elapsed_s)
        if log.isEnabledFor(logging.DEBUG):  # a line per request only when asked for (model_log_level)
            rid = {"request_id": reply.request_id} if reply.request_id else None
            log.debug("%s: %s after %.1f ms", self.name, reply.status.value, elapsed_s * 1000, extra=rid)
        try:
            worker.send_multipart(protocol.reply_frames(envelope, reply), copy=False)
        except zmq.ZMQError as exc:  # the proxy is gone (shutting down): nothing left to answer to
            with logs.request_context(reply.request_id):
                log.warning("%s: reply %s not sent: %s", self.name, reply.request_id, exc)
