"""A request's path through the model server: admit → decode (thread pool) → batch → top-k → reply.

No sockets here: a worker hands in a parsed Request and a callback, and gets its Reply either at once
(refusals) or later, from a decoder or the batcher thread. Decoding happens per request before batching
(TF Serving's advice), so one corrupt JPEG fails alone and decoding overlaps with inference.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from services import imaging
from services.config import ModelConfig
from services.model.batcher import Batcher, BatcherStopped, BatchResult, DeadlineExceeded, QueueFull
from services.model.metrics import ServerMetrics
from services.model.preprocess import decode_image
from services.protocol import ENCODING_RGB8, OP_PING, Prediction, Reply, Request, Status

log = logging.getLogger(__name__)

ReplyCallback = Callable[[Reply], None]


class Runtime(Protocol):
    name: str
    labels: list[str]

    def predict_batch(self, images: np.ndarray) -> np.ndarray: ...


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """The k most probable classes, best first."""
    k = min(k, probabilities.shape[0])
    best = np.argpartition(probabilities, -k)[-k:]
    best = best[np.argsort(probabilities[best])[::-1]]
    return [Prediction(labels[i], int(i), float(probabilities[i])) for i in best]


class Pipeline:
    """Owns the decoder pool and the batcher; bounded by max_queue_size admitted requests in all and by
    max_in_flight_per_client per client."""

    def __init__(self, cfg: ModelConfig, runtime: Runtime, metrics: ServerMetrics) -> None:
        self._cfg = cfg
        self._runtime = runtime
        self._metrics = metrics
        self._decoders = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")
        self.batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
            self._predict,
            max_batch_size=cfg.max_batch_size,
            max_batch_delay_ms=cfg.max_batch_delay_ms,
            max_queue_size=cfg.max_queue_size,
            observer=metrics.observe_batch,
            pending=lambda: self._decoding,
            threads=cfg.inference_workers,
        )
        self._lock = threading.Lock()
        self._in_flight = 0
        self._filled = 0  # times the queue became full
        # Admitted requests per client (routing id); a client leaves the map with its last request, so it
        # never holds more than max_queue_size entries however many peers come and go.
        self._per_client: dict[bytes, int] = {}
        self._decoding = 0  # admitted requests in the decoder pool: the batcher waits for these only
        self.draining = False

    def start(self) -> Pipeline:
        self.batcher.start()
        return self

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(self._runtime.predict_batch(np.stack(images)))

    def clients(self) -> int:
        """Clients with a request in flight."""
        return len(self._per_client)

    def _admit(self, client: bytes) -> str | None:
        """Count the request in, or say why not (the queue or this client's share is full)."""
        cfg = self._cfg
        with self._lock:
            if self._in_flight >= cfg.max_queue_size:
                reason, why = "queue_full", f"queue full ({cfg.max_queue_size} requests in flight)"
            elif (held := self._per_client.get(client, 0)) >= cfg.max_in_flight_per_client:
                reason = "client_limit"
                why = f"this client has {held} requests in flight (limit {cfg.max_in_flight_per_client})"
            else:
                self._in_flight += 1
                self._per_client[client] = held + 1
                reason = ""
                if self._in_flight == cfg.max_queue_size:
                    self._filled += 1
        if reason:
            self._metrics.refused.labels(reason).inc()
            return why
        self._metrics.in_flight.inc()
        return None

    def _release(self, client: bytes) -> None:
        with self._lock:
            self._in_flight -= 1
            held = self._per_client.pop(client) - 1
            if held:
                self._per_client[client] = held
        self._metrics.in_flight.dec()

    def handle(
        self, request: Request, received: float, done: ReplyCallback, client: bytes = b""
    ) -> Reply | None:
        """Answer now (refusals, ping) by returning a Reply, or return None and call `done` later once.

        `received` is time.monotonic() at receipt. `done` may run on another thread. `client` names the
        peer (its routing id) for the per-client bound.
        """
        rid = request.request_id
        if self.draining:
            self._metrics.refused.labels("draining").inc()
            return Reply(rid, Status.OVERLOADED, "server is draining; try another")
        size = self._cfg.input_size
        if request.op == OP_PING:
            return Reply(
                rid,
                Status.OK,
                model=self._runtime.name,
                input_size=size,
                crop_fraction=self._cfg.crop_fraction,
            )
        if request.encoding == ENCODING_RGB8 and request.shape != (size, size, 3):
            return Reply(rid, Status.BAD_REQUEST, f"rgb8 pixels must be {size}×{size}×3, got {request.shape}")
        remaining_s = request.remaining_s()
        if remaining_s <= 0:
            return Reply(rid, Status.DEADLINE_EXCEEDED, "deadline passed before the request arrived")
        if len(request.image) > self._cfg.max_upload_bytes:
            return Reply(
                rid,
                Status.TOO_LARGE,
                f"image is {len(request.image)} bytes; limit {self._cfg.max_upload_bytes}",
            )
        filled = self._filled  # read first: the request that fills the queue saw it full too
        if (refusal := self._admit(client)) is not None:
            return Reply(rid, Status.OVERLOADED, refusal)
        deadline = received + remaining_s

        def finish(reply: Reply) -> None:
            self._release(client)
            # the queue drains and refills with each batch: report it full if it filled at any moment while
            # this request was held, so a client grows its share only into room that lasted
            if reply.queue_capacity and self._filled != filled:
                reply = dataclasses.replace(reply, queue_depth=reply.queue_capacity)
            done(reply)

        if request.encoding == ENCODING_RGB8:  # decoded by the client: straight to the batcher, no copy
            image = np.frombuffer(request.image, np.uint8).reshape(request.shape)
            self._enqueue(image, request, received, deadline, 0.0, 0.0, finish)
            return None
        try:
            with self._lock:
                self._decoding += 1
            decoding = self._decoders.submit(self._decode, request, deadline)
        except RuntimeError:  # pool shut down
            with self._lock:
                self._decoding -= 1
            self._release(client)
            return Reply(rid, Status.OVERLOADED, "server is stopping")
        decoding.add_done_callback(lambda f: self._decoded(f, request, received, deadline, finish))
        return None

    def _decode(self, request: Request, deadline: float) -> tuple[np.ndarray, float, float]:
        start = time.monotonic()
        if start >= deadline:
            raise DeadlineExceeded("deadline passed while waiting for a decoder")
        cfg = self._cfg
        image = decode_image(request.image, cfg.input_size, cfg.crop_fraction, cfg)  # cfg holds the limits
        return image, start, time.monotonic() - start

    def _decoded(
        self, decoding: Future, request: Request, received: float, deadline: float, finish: ReplyCallback
    ) -> None:
        with self._lock:
            self._decoding -= 1
        rid = request.request_id
        try:
            image, decode_start, preprocess_s = decoding.result()
        except imaging.ImageError as exc:
            return finish(Reply(rid, Status.BAD_IMAGE, str(exc)))
        except DeadlineExceeded as exc:
            return finish(Reply(rid, Status.DEADLINE_EXCEEDED, str(exc)))
        except Exception:
            log.exception("request %s: decoding failed", rid)
            return finish(Reply(rid, Status.INTERNAL, "decoding failed"))
        self._metrics.preprocess_seconds.observe(preprocess_s)
        self._enqueue(image, request, received, deadline, decode_start - received, preprocess_s, finish)

    def _enqueue(
        self,
        image: np.ndarray,
        request: Request,
        received: float,
        deadline: float,
        waited_s: float,
        preprocess_s: float,
        finish: ReplyCallback,
    ) -> None:
        """Hand a decoded image to the batcher; the reply is built when its batch has run."""
        try:
            batching = self.batcher.submit(image, deadline)
        except (QueueFull, BatcherStopped) as exc:
            return finish(Reply(request.request_id, Status.OVERLOADED, str(exc)))
        batching.add_done_callback(
            lambda f: self._inferred(f, request, received, waited_s, preprocess_s, finish)
        )

    def _inferred(
        self,
        batching: Future,
        request: Request,
        received: float,
        waited_s: float,
        preprocess_s: float,
        finish: ReplyCallback,
    ) -> None:
        rid = request.request_id
        try:
            result: BatchResult[np.ndarray] = batching.result()
        except DeadlineExceeded as exc:
            return finish(Reply(rid, Status.DEADLINE_EXCEEDED, str(exc)))
        except BatcherStopped as exc:
            return finish(Reply(rid, Status.OVERLOADED, str(exc)))
        except Exception as exc:
            return finish(Reply(rid, Status.INTERNAL, f"inference failed: {type(exc).__name__}"))
        queue_s = waited_s + result.queue_s
        self._metrics.queue_seconds.observe(queue_s)
        timings_ms = {
            "queue": queue_s * 1000,
            "preprocess": preprocess_s * 1000,
            "inference": result.inference_s * 1000,
            "total": (time.monotonic() - received) * 1000,
        }
        predictions = top_k(result.output, self._runtime.labels, request.top_k)
        finish(
            Reply(
                rid,
                Status.OK,
                None,
                predictions,
                timings_ms,
                result.batch_size,
                self._runtime.name,
                queue_depth=self._in_flight,  # see finish(): the web tier's admission grows only into room
                queue_capacity=self._cfg.max_queue_size,
            )
        )

    def drain(self, timeout_s: float) -> bool:
        """Refuse new work and wait for what is in flight; True when everything finished in time."""
        self.draining = True
        end = time.monotonic() + timeout_s
        while self._in_flight > 0 and time.monotonic() < end:
            time.sleep(0.01)
        return self._in_flight == 0

    def close(self) -> None:
        self.batcher.stop(timeout=5)
        self._decoders.shutdown(wait=True, cancel_futures=True)
