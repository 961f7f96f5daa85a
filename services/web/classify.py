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

from PIL import Image

from services import imaging
from services.config import WebConfig
from services.protocol import Reply, Status
from services.web.admission import Ticket
from services.web.model_client import ModelClient, Shape


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
    decoded: bool  # pixels went: the photo was preprocessed here, not on the model server

    def timings_ms(self) -> dict[str, float]:
        """The server's timings and the web tier's: its preprocessing, the round trip, the total until now."""
        timings = dict(self.reply.timings_ms)  # the server's own: queue, preprocess, inference, total
        if self.decoded:
            timings["preprocess"] = _ms(self.sent - self.started)  # done here, not on the model server
        timings["model_roundtrip_ms"] = _ms(self.answered - self.sent)
        timings["total_ms"] = _ms(time.perf_counter() - self.started)  # web side, upload in memory → reply
        return timings


def send_photo(client: ModelClient, photo: Photo, cfg: WebConfig, before_send: Callable[[], None]) -> Sent:
    """Send the photo to a model server as pixels when the model's input size is known, else as uploaded.

    `before_send` runs just before each send; it raises to stop there (the client has gone).
    :raise imaging.ImageError: the photo cannot be decoded within the limits (only when decoded here).
    """
    spec = client.input_spec() if cfg.decode_in_web else None
    if spec is not None:
        size, crop_fraction = spec
        pixels = imaging.fit(photo.image, size, crop_fraction, cfg.max_decode_bytes).tobytes()
        sent = _send(client, photo, before_send, pixels, (size, size, 3))
        if sent.reply.status is not Status.BAD_REQUEST:
            return sent
        client.forget_input_spec()  # the model (and its input size) changed under us: ask again next time
    return _send(client, photo, before_send, photo.data, None)  # the model server decodes the upload


def send_photos(
    photos: list[Photo],
    cfg: WebConfig,
    tickets: list[Ticket],
    client_for: Callable[[], ModelClient],
    before_send: Callable[[], None],
    pool: Executor,
) -> list[Sent]:
    """Send several photos at once, as many at a time as there are tickets, each from a pool thread with
    its own client: they reach the model servers together and batch there. Answers in the photos' order.

    :raise: the first photo's error (imaging.ImageError, ModelUnavailable, ModelTimeout, ClientGone).
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
        return [one(photos[0])]
    # Each photo runs in a copy of this thread's context: its log lines and spans stay the request's.
    futures = [pool.submit(contextvars.copy_context().run, one, photo) for photo in photos]
    wait(futures)  # all of them, even after a failure: their tickets are given back only afterwards
    return [future.result() for future in futures]


def _send(
    client: ModelClient, photo: Photo, before_send: Callable[[], None], image: bytes, shape: Shape | None
) -> Sent:
    """One classify request for the photo, within what is left of its deadline."""
    before_send()
    sent = time.perf_counter()
    timeout_ms = _left_ms(photo.deadline)
    reply = client.classify(
        image, photo.top_k, request_id=photo.request_id, shape=shape, timeout_ms=timeout_ms
    )
    return Sent(reply, photo.started, sent, time.perf_counter(), decoded=shape is not None)


def _left_ms(deadline: float) -> int:
    """Milliseconds left before the deadline; at least 1, so an expired one ends as a timeout (504)."""
    return max(1, int((deadline - time.time()) * 1000))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
