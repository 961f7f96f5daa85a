"""How a checked photo goes to the model tier: as pixels at the model's input size if known, else as uploaded.

Decoding here (decode_in_web) takes the decode off the model pods, whose few cores then go to the model. The
input size is what the model client learned from a ping, once per process (the first photo of a process
may wait for that ping). A model server running another model refuses the pixels with BAD_REQUEST: the
size is then forgotten, to be asked again, and the photo goes again as uploaded, within what is left of
its deadline.
"""

from __future__ import annotations

import contextvars
import queue
import time
from collections.abc import Callable
from concurrent.futures import Executor, wait
from dataclasses import dataclass
from typing import Any, cast

from PIL import Image

from services import imaging
from services.config import WebConfig
from services.protocol import Reply, Status
from services.web.admission import Ticket
from services.web.model_client import ModelClient, Shape
from services.web.tiers import admission


@dataclass(frozen=True)
class Photo:
    """One checked upload on its way to the model tier."""

    data: bytes  # as uploaded
    image: Image.Image  # opened and checked by imaging.open_image, not decoded yet
    top_k: int
    request_id: str | None  # the caller's when it is safe to pass on; else the model client makes one
    deadline: float  # time.time() by which the answer is due
    started: float  # time.perf_counter() when the web tier took the photo up


@dataclass(frozen=True)
class Sent:
    """The model's reply to a photo, and when (time.perf_counter()) the photo was sent and answered."""

    reply: Reply
    started: float  # Photo.started
    sent: float
    answered: float
    decode_s: float  # decoding and resizing here; 0 when the model server decoded the upload

    def timings_ms(self) -> dict[str, float]:
        """Where the request's time went, in milliseconds: the API's `timings_ms`.

        total: upload in memory → answer ready (now); decode: decoding and resizing, here or on the model
        server; queue: waiting on the model server for a decoder and for the batch; inference: the batch's
        model call; model_server: receipt → reply there; roundtrip: send → reply here (model_server plus
        the network). The wire keeps the server's own names (queue, preprocess, inference, total); a value
        the server left out counts as 0.
        """
        server = self.reply.timings_ms
        return {
            "total": _ms(time.perf_counter() - self.started),
            "decode": round(self.decode_s * 1000 + server.get("preprocess", 0.0), 3),
            "queue": round(server.get("queue", 0.0), 3),
            "inference": round(server.get("inference", 0.0), 3),
            "model_server": round(server.get("total", 0.0), 3),
            "roundtrip": _ms(self.answered - self.sent),
        }


def api_result(sent: Sent, info: imaging.ImageInfo) -> dict[str, Any]:
    """The API's answer for one classified photo (its reply OK): predictions, model, batch, image, timings."""
    reply = sent.reply
    return {
        "request_id": reply.request_id,
        "predictions": [
            {"label": p.label, "index": p.index, "probability": p.probability} for p in reply.predictions
        ],
        "model": reply.model,
        "batch_size": reply.batch_size,
        "image": {"format": info.format, "width": info.width, "height": info.height},
        "timings_ms": sent.timings_ms(),
    }


def send_photo(client: ModelClient, photo: Photo, cfg: WebConfig, before_send: Callable[[], None]) -> Sent:
    """Send the photo to a model server as pixels when the model's input size is known, else as uploaded.

    `before_send` runs just before each send; it raises to stop there (the client has gone).
    :raise imaging.ImageError: the photo cannot be decoded within the limits (only when decoded here).
    """
    spec = client.input_spec() if cfg.decode_in_web else None
    if spec is not None:
        size, crop_fraction = spec
        decoding = time.perf_counter()
        pixels = imaging.fit(photo.image, size, crop_fraction, cfg.max_decode_bytes).tobytes()
        decode_s = time.perf_counter() - decoding
        sent = _send(client, photo, before_send, pixels, (size, size, 3), decode_s)
        if sent.reply.status is not Status.BAD_REQUEST:
            return sent
        client.forget_input_spec()  # the model (and its input size) changed under us: ask again next time
    return _send(client, photo, before_send, photo.data, None)  # the model server decodes the upload


def all_sent(outcomes: list[Sent | BaseException]) -> list[Sent]:
    """send_each's outcomes when every photo was answered; else raise the first photo's error."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return cast(list[Sent], outcomes)


def send_each(
    photos: list[Photo],
    cfg: WebConfig,
    tickets: list[Ticket],
    client_for: Callable[[], ModelClient],
    before_send: Callable[[], None],
    pool: Executor,
) -> list[Sent | BaseException]:
    """Send several photos at once, as many at a time as there are tickets, each from a pool thread with
    its own client: they reach the model servers together and batch there. Answers in the photos' order,
    each photo's reply or the error that stopped it (imaging.ImageError, ModelUnavailable, ModelTimeout,
    ClientGone), so that one photo's failure leaves the others theirs.
    """
    free: queue.SimpleQueue[Ticket] = queue.SimpleQueue()
    for ticket in tickets:
        free.put(ticket)

    def one(photo: Photo) -> Sent:
        ticket = free.get()  # a pool thread waits here while every ticket is in flight
        try:
            sent = send_photo(client_for(), photo, cfg, before_send)
            ticket.answered(sent.reply)
            return sent
        finally:
            free.put(ticket)

    if len(photos) == 1:
        try:
            return [one(photos[0])]
        except Exception as exc:
            return [exc]
    # Each photo runs in a copy of this thread's context: its log lines and spans stay the request's.
    futures = [pool.submit(contextvars.copy_context().run, one, photo) for photo in photos]
    wait(futures)  # all of them, even after a failure: their tickets are given back only afterwards
    return [future.exception() or future.result() for future in futures]


def more_tickets(cfg: WebConfig, wanted: int) -> list[Ticket]:
    """Up to `wanted` more places under the admission limit: a request's photos go that many at a time."""
    gate, taken = admission(cfg), []
    for _ in range(max(0, wanted)):
        ticket = gate.try_acquire()
        if ticket is None:
            break
        taken.append(ticket)
    return taken


def photo_request_id(request_id: str, index: int, count: int) -> str:
    """The model request id of one photo: the request's id, numbered when the request has several."""
    if count == 1:
        return request_id
    suffix = f".{index}"
    return request_id[: 64 - len(suffix)] + suffix


def _send(
    client: ModelClient,
    photo: Photo,
    before_send: Callable[[], None],
    image: bytes,
    shape: Shape | None,
    decode_s: float = 0.0,
) -> Sent:
    """One classify request for the photo, within what is left of its deadline; `decode_s`: the time it
    took to decode the pixels sent (0 for an upload sent as it is)."""
    before_send()
    sent = time.perf_counter()
    timeout_ms = _left_ms(photo.deadline)
    reply = client.classify(
        image, photo.top_k, request_id=photo.request_id, shape=shape, timeout_ms=timeout_ms
    )
    return Sent(reply, photo.started, sent, time.perf_counter(), decode_s)


def _left_ms(deadline: float) -> int:
    """Milliseconds left before the deadline; at least 1, so an expired one ends as a timeout (504)."""
    return max(1, int((deadline - time.time()) * 1000))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
