"""Several photos in one request: each checked and classified on its own, all sent at once so they batch.

A photo that fails (an empty file, not a photo, a refusal by the model server) gets its own error and
leaves the others their results; only a client that has gone stops them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app
from werkzeug.exceptions import HTTPException

from services import imaging
from services.config import WebConfig
from services.web import correlation
from services.web.admission import Ticket
from services.web.classify import Photo, Sent, api_result, photo_request_id, send_each
from services.web.clients import client_maker, fan_out_pool
from services.web.errors import error_for_reply, http_error

Upload = tuple[bytes, str]  # a photo's bytes and its (untrusted) file name


@dataclass(frozen=True)
class Answer:
    """One photo's outcome: its API result object, or the HTTP error that stopped it."""

    filename: str
    result: dict[str, Any] | None = None
    error: HTTPException | None = None


def classify_each(
    uploads: list[Upload],
    top_k: int,
    deadline: float,
    tickets: list[Ticket],
    check: Callable[[bytes, str], None],
    before_send: Callable[[], None],
) -> list[Answer]:
    """Check every photo here, send the good ones to the model tier at once, and answer each in order.

    `check` refuses an upload before it is opened (an HTTPException, e.g. an empty file); `before_send`
    raises to stop a send (the client has gone), which stops the whole request.
    """
    cfg: WebConfig = current_app.config["ZEROLENS"]
    started = time.perf_counter()  # every photo's total counts from the request's start
    request_id, count = correlation.request_id(), len(uploads)
    answers: list[Answer | None] = [None] * count
    photos: list[Photo] = []
    opened: list[tuple[int, imaging.ImageInfo]] = []  # each photo sent: its place and what it is
    for index, (data, filename) in enumerate(uploads):
        try:
            check(data, filename)
            img = imaging.open_image(data, cfg.max_image_pixels, cfg.max_image_side)
        except (HTTPException, imaging.ImageError) as exc:
            answers[index] = Answer(filename, error=http_error(exc))
            continue
        rid = photo_request_id(request_id, index, count)
        photos.append(Photo(data, img, top_k, rid, deadline, started))
        opened.append((index, imaging.describe(img)))
    if photos:
        outcomes = send_each(photos, cfg, tickets, client_maker(), before_send, fan_out_pool())
        for (index, info), outcome in zip(opened, outcomes, strict=True):
            answers[index] = _answer(uploads[index][1], info, outcome)
    return [answer for answer in answers if answer is not None]


def _answer(filename: str, info: imaging.ImageInfo, outcome: Sent | BaseException) -> Answer:
    """One sent photo's answer.

    :raise: what is no photo's own failure (the client has gone, a bug): it stops the request.
    """
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, Exception):
            raise outcome
        return Answer(filename, error=http_error(outcome))  # raises it again unless it is a known failure
    if not outcome.reply.ok:
        return Answer(filename, error=error_for_reply(outcome.reply))
    return Answer(filename, result=api_result(outcome, info))
