"""A request's path through the model server: admit → decode (thread pool) → batch → top-k → reply.

No sockets here: a worker hands in a parsed Request and a callback, and the pipeline answers through that
callback exactly once, at once (refusals, ping) or later, from a decoder or the batcher thread. Decoding
happens per request before batching (TF Serving's advice), so one corrupt JPEG fails alone and decoding
overlaps with inference.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from services import decode_budget, imaging, logs, tracing
from services.config import ModelConfig
from services.model.batcher import Batcher, BatcherStopped, BatchResult, DeadlineExceeded, QueueFull
from services.model.metrics import ServerMetrics
from services.model.preprocess import decode_image
from services.model.runtime import Runtime
from services.protocol import ENCODING_RGB8, OP_PING, Prediction, Reply, Request, Status

log = logging.getLogger(__name__)

ReplyCallback = Callable[[Reply], None]
# What the batcher queues while tracing is on: the image and its request's span (for the batch's span).
Traced = tuple[np.ndarray, Any]


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """The k most probable classes, best first."""
    k = min(k, probabilities.shape[0])
    best = np.argpartition(probabilities, -k)[-k:]
    best = best[np.argsort(probabilities[best])[::-1]]
    return [Prediction(labels[i], int(i), float(probabilities[i])) for i in best]


def _request_span(request: Request) -> Any:
    """The request's server span: a child of the web tier's client span when its header names one."""
    carrier = {"traceparent": request.traceparent} if request.traceparent else {}
    attributes = {
        "rpc.system": "zerolens",
        "rpc.method": request.op,
        "zerolens.request_id": request.request_id,
        "zerolens.encoding": request.encoding,
    }
    return tracing.start_span(
        f"zerolens.model/{request.op}", kind="server", carrier=carrier, attributes=attributes
    )


def _record(
    parent: Any, name: str, start: float, end: float, attributes: dict[str, Any] | None = None
) -> None:
    """A finished span under `parent` from time.monotonic() readings (measured anyway, for the timings)."""
    offset_ns = time.time_ns() - time.monotonic_ns()  # monotonic → wall clock, which spans are stamped in
    start_ns = offset_ns + int(start * 1e9)
    span = tracing.start_span(name, parent=parent, start_ns=start_ns, attributes=attributes)
    tracing.end_span(span, end_ns=offset_ns + int(end * 1e9))


class _Admission:
    """The requests admitted and not yet answered: in all, per client, and how many are being decoded."""

    def __init__(self, cfg: ModelConfig, metrics: ServerMetrics) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._lock = threading.Lock()
        self.in_flight = 0
        self.filled = 0  # times in_flight reached max_queue_size
        self.decoding = 0  # admitted requests in the decoder pool: the batcher waits for these only
        # Admitted requests per client (routing id); a client leaves the map with its last request, so it
        # never holds more than max_queue_size entries however many peers come and go.
        self._per_client: dict[bytes, int] = {}

    def clients(self) -> int:
        return len(self._per_client)

    def admit(self, client: bytes) -> str | None:
        """Count the request in, or say why not (the queue or this client's share is full)."""
        cfg = self._cfg
        with self._lock:
            if self.in_flight >= cfg.max_queue_size:
                reason, why = "queue_full", f"queue full ({cfg.max_queue_size} requests in flight)"
            elif (held := self._per_client.get(client, 0)) >= cfg.max_in_flight_per_client:
                reason = "client_limit"
                why = f"this client has {held} requests in flight (limit {cfg.max_in_flight_per_client})"
            else:
                self.in_flight += 1
                self._per_client[client] = held + 1
                reason = ""
                if self.in_flight == cfg.max_queue_size:
                    self.filled += 1
        if reason:
            self._metrics.refused.labels(reason).inc()
            return why
        self._metrics.in_flight.inc()
        return None

    def release(self, client: bytes) -> None:
        with self._lock:
            self.in_flight -= 1
            held = self._per_client.pop(client) - 1
            if held:
                self._per_client[client] = held
        self._metrics.in_flight.dec()

    def count_decoding(self, change: int) -> None:
        with self._lock:
            self.decoding += change


class _Job:
    """One request on its way through the pipeline (admit → decode → batch → reply), answered exactly once.

    It carries what the later stages need (as Ray Serve's _SingleRequest does), so each stage takes the job,
    and `answer` is the only way out: it gives back what the job holds, then calls the worker's callback.
    """

    def __init__(self, request: Request, received: float, client: bytes, done: ReplyCallback) -> None:
        self.request = request
        self.received = received  # time.monotonic() at receipt
        self.remaining_s = request.remaining_s()
        self.deadline = received + self.remaining_s
        self.client = client  # the peer's routing id, for the per-client bound
        self.waited_s = 0.0  # receipt → a decoder took it (0 for pixels decoded by the client)
        self.preprocess_s = 0.0
        self.span: Any = None  # the request's span, while tracing is on
        self.enqueued = 0.0  # time.monotonic() when it reached the batcher; set while tracing is on
        self._done = done
        self._admission: _Admission | None = None  # set once admitted
        self._filled_at = 0  # admission.filled when admitted
        self._decoding = False
        self._answered = False

    def admit(self, admission: _Admission) -> str | None:
        """Take a place in the queue, or say why there is none."""
        filled = admission.filled  # read first: the request that fills the queue saw it full too
        refusal = admission.admit(self.client)
        if refusal is None:
            self._admission, self._filled_at = admission, filled
        return refusal

    def set_decoding(self, decoding: bool) -> None:
        """Count the job among those in the decoder pool, or stop counting it; answering stops it too."""
        if self._admission is not None and decoding != self._decoding:
            self._decoding = decoding
            self._admission.count_decoding(1 if decoding else -1)

    def fail(self, status: Status, error: str) -> None:
        self.answer(Reply(self.request.request_id, status, error))

    def answer(self, reply: Reply) -> None:
        """Give back the admission slot, then hand the reply to the worker's callback."""
        if self._answered:
            raise RuntimeError(f"request {self.request.request_id} answered twice")
        self._answered = True
        admission = self._admission
        if admission is not None:
            self.set_decoding(False)
            admission.release(self.client)
            # the queue drains and refills with each batch: report it full if it filled at any moment while
            # this request was held, so a client grows its share only into room that lasted
            if reply.queue_capacity and admission.filled != self._filled_at:
                reply = dataclasses.replace(reply, queue_depth=reply.queue_capacity)
        if self.span is not None:
            error = reply.error if reply.status is Status.INTERNAL else None  # a refusal is not a failure
            attributes = {"zerolens.status": reply.status.value, "zerolens.batch_size": reply.batch_size}
            tracing.end_span(self.span, error, attributes)
        self._done(reply)


class Pipeline:
    """Owns the decoder pool and the batcher; bounded by max_queue_size admitted requests in all and by
    max_in_flight_per_client per client."""

    def __init__(self, cfg: ModelConfig, runtime: Runtime, metrics: ServerMetrics) -> None:
        self._cfg = cfg
        self._runtime = runtime
        self._metrics = metrics
        self._admission = _Admission(cfg, metrics)
        self._decoders = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")
        # Read once: a request's spans are all made, or none. Off, nothing below touches OpenTelemetry.
        self._traced = tracing.tracer() is not None
        self.batcher: Batcher[Any, np.ndarray] = Batcher(
            self._predict_traced if self._traced else self._predict,
            max_batch_size=cfg.max_batch_size,
            max_batch_delay_ms=cfg.max_batch_delay_ms,
            max_queue_size=cfg.max_queue_size,
            observer=metrics.observe_batch,
            pending=lambda: self._admission.decoding,
            threads=cfg.inference_workers,
        )
        self.draining = False

    def start(self) -> Pipeline:
        self.batcher.start()
        return self

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered."""
        return self._admission.in_flight

    def clients(self) -> int:
        """Clients with a request in flight."""
        return self._admission.clients()

    def _predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(self._runtime.predict_batch(np.stack(images)))

    def _predict_traced(self, items: list[Traced]) -> list[np.ndarray]:
        """_predict in a span of the batch: a child of its first request's span, linked to every one's (a
        batch serves several traces)."""
        spans = [span for _, span in items]
        attributes = {"zerolens.batch_size": len(items)}
        with tracing.span("zerolens.model/batch", parent=spans[0], links=spans, attributes=attributes):
            return self._predict([image for image, _ in items])

    def handle(self, request: Request, received: float, done: ReplyCallback, client: bytes = b"") -> None:
        """Answer `request` through `done`, exactly once: before returning (refusals, ping) or later.

        `received` is time.monotonic() at receipt. `done` may run on another thread. `client` names the
        peer (its routing id) for the per-client bound.
        """
        job = _Job(request, received, client, done)
        if self._traced and request.op != OP_PING:  # pings come every few seconds from every web worker
            job.span = _request_span(request)
        if (reply := self._answer_now(job)) is not None:
            return job.answer(reply)
        if (refusal := job.admit(self._admission)) is not None:
            return job.fail(Status.OVERLOADED, refusal)
        if request.encoding == ENCODING_RGB8:  # decoded by the client: straight to the batcher, no copy
            return self._enqueue(job, np.frombuffer(request.image, np.uint8).reshape(request.shape))
        job.set_decoding(True)  # before it is queued for a decoder, so the batcher knows it is coming
        try:
            decoding = self._decoders.submit(self._decode, job)
        except RuntimeError:  # pool shut down
            return job.fail(Status.OVERLOADED, "server is stopping")
        decoding.add_done_callback(lambda f: self._decoded(f, job))

    def _answer_now(self, job: _Job) -> Reply | None:
        """The reply that needs neither a place in the queue nor the model (refusals, ping), if any."""
        request, rid = job.request, job.request.request_id
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
        if job.remaining_s <= 0:
            return Reply(rid, Status.DEADLINE_EXCEEDED, "deadline passed before the request arrived")
        if len(request.image) > self._cfg.max_upload_bytes:
            return Reply(
                rid,
                Status.TOO_LARGE,
                f"image is {len(request.image)} bytes; limit {self._cfg.max_upload_bytes}",
            )
        return None

    def _decode(self, job: _Job) -> np.ndarray:
        """Runs on a decoder thread."""
        start = time.monotonic()
        if start >= job.deadline:
            raise DeadlineExceeded("deadline passed while waiting for a decoder")
        cfg = self._cfg
        with logs.request_context(job.request.request_id):
            image = decode_image(job.request.image, cfg.input_size, cfg.crop_fraction, cfg)  # cfg: the limits
        job.waited_s, job.preprocess_s = start - job.received, time.monotonic() - start
        return image

    def _decoded(self, decoding: Future[np.ndarray], job: _Job) -> None:
        """Runs on the decoder thread once the image is decoded, or failed to be."""
        with logs.request_context(job.request.request_id):
            self._after_decode(decoding, job)

    def _after_decode(self, decoding: Future[np.ndarray], job: _Job) -> None:
        job.set_decoding(False)  # before it reaches the batcher, which would otherwise wait for it
        try:
            image = decoding.result()
        except imaging.ImageError as exc:
            return job.fail(Status.BAD_IMAGE, str(exc))
        except decode_budget.DecodeBusy as exc:  # the other decodes' memory, not this photo: try again
            self._metrics.refused.labels("decode_busy").inc()
            return job.fail(Status.OVERLOADED, str(exc))
        except DeadlineExceeded as exc:
            return job.fail(Status.DEADLINE_EXCEEDED, str(exc))
        except Exception:
            log.exception("request %s: decoding failed", job.request.request_id)
            return job.fail(Status.INTERNAL, "decoding failed")
        self._metrics.preprocess_seconds.observe(job.preprocess_s)
        if job.span is not None:
            began, wait = job.received + job.waited_s, {"zerolens.decode_wait_ms": job.waited_s * 1000}
            _record(job.span, "zerolens.model/decode", began, began + job.preprocess_s, wait)
        self._enqueue(job, image)

    def _enqueue(self, job: _Job, image: np.ndarray) -> None:
        """Hand a decoded image to the batcher; the reply is built when its batch has run."""
        value: np.ndarray | Traced = image
        if job.span is not None:
            value, job.enqueued = (image, job.span), time.monotonic()
        try:
            batching = self.batcher.submit(value, job.deadline)
        except (QueueFull, BatcherStopped) as exc:
            return job.fail(Status.OVERLOADED, str(exc))
        batching.add_done_callback(lambda f: self._inferred(f, job))

    def _inferred(self, batching: Future[BatchResult[np.ndarray]], job: _Job) -> None:
        """Runs on the batcher thread once the job's batch has run, or failed to."""
        with logs.request_context(job.request.request_id):
            self._reply(batching, job)

    def _reply(self, batching: Future[BatchResult[np.ndarray]], job: _Job) -> None:
        try:
            result = batching.result()
        except DeadlineExceeded as exc:
            return job.fail(Status.DEADLINE_EXCEEDED, str(exc))
        except BatcherStopped as exc:
            return job.fail(Status.OVERLOADED, str(exc))
        except Exception as exc:
            return job.fail(Status.INTERNAL, f"inference failed: {type(exc).__name__}")
        queue_s = job.waited_s + result.queue_s
        self._metrics.queue_seconds.observe(queue_s)
        if job.span is not None:
            _record(job.span, "zerolens.model/queue", job.enqueued, job.enqueued + result.queue_s)
        timings_ms = {
            "queue": queue_s * 1000,
            "preprocess": job.preprocess_s * 1000,
            "inference": result.inference_s * 1000,
            "total": (time.monotonic() - job.received) * 1000,
        }
        job.answer(
            Reply(
                job.request.request_id,
                Status.OK,
                None,
                top_k(result.output, self._runtime.labels, job.request.top_k),
                timings_ms,
                result.batch_size,
                self._runtime.name,
                queue_depth=self.in_flight,  # see _Job.answer: the web tier's admission grows only into room
                queue_capacity=self._cfg.max_queue_size,
            )
        )

    def drain(self, timeout_s: float) -> bool:
        """Refuse new work and wait for what is in flight; True when everything finished in time."""
        self.draining = True
        end = time.monotonic() + timeout_s
        while self.in_flight > 0 and time.monotonic() < end:
            time.sleep(0.01)
        return self.in_flight == 0

    def close(self) -> None:
        self.batcher.stop(timeout=5)
        self._decoders.shutdown(wait=True, cancel_futures=True)
