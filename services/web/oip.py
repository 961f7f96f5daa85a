"""The Open Inference Protocol (KServe v2) REST routes: health, metadata, and infer with several photos.

Triton's and KServe's clients work unchanged (oip_codec.py reads and writes the bodies). The model is the
one the model servers have loaded, under the name their replies carry; errors are `{"error": "..."}`
(errors.py). The photos of one request are admitted, checked and sent as the JSON API's are, all at once,
so that they batch on the model servers.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import time

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, NotFound

from services import imaging
from services.config import WebConfig
from services.imaging import ImageError
from services.protocol import MAX_CLASSES
from services.web import correlation, oip_codec
from services.web.classify import Photo, all_sent, more_tickets, photo_request_id, send_each
from services.web.clients import FAN_OUT_THREADS, client_maker, fan_out_pool, get_client
from services.web.errors import error_for_reply
from services.web.oip_codec import InferError
from services.web.views import admit, client_check, readiness

bp = Blueprint("oip", __name__, url_prefix="/v2")
SERVER_NAME = "zerolens"

# The model's name as the model servers last gave it, per process and model tier: an infer request names
# it, and asking the servers every time would cost a round trip. A name that does not match asks again,
# so a tier that changed its model is followed.
_names: dict[str, str] = {}
_names_lock = threading.Lock()
_names_pid: int | None = None


def _cfg() -> WebConfig:
    return current_app.config["ZEROLENS"]


def _remember(model: str) -> str:
    global _names_pid
    with _names_lock:
        if _names_pid != os.getpid():
            _names.clear()
            _names_pid = os.getpid()
        if model:
            _names[_cfg().model_server] = model
        return _names.get(_cfg().model_server, "")


def _served_model(name: str, version: str | None) -> str:
    """The model's name when `name` (and `version`) are what this server serves; 404 otherwise."""
    known = _remember("")
    if name != known:
        reply = get_client().ping(_cfg().ready_timeout_ms)  # the tier may have changed its model
        if not reply.ok:
            raise error_for_reply(reply)
        known = _remember(reply.model)
    if name != known:
        raise NotFound(f"unknown model {name!r}: this server serves {known!r}")
    if version is not None and version != oip_codec.MODEL_VERSION:
        has = oip_codec.MODEL_VERSION
        raise NotFound(f"unknown version {version!r} of model {name!r}: it has version {has}")
    return known


@bp.get("")
def server_metadata() -> Response:
    """The server's name, version and protocol extensions."""
    try:
        version = importlib.metadata.version("zerolens")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return jsonify(name=SERVER_NAME, version=version, extensions=list(oip_codec.EXTENSIONS))


@bp.get("/health/live")
def live() -> Response:
    """Liveness: the process answers HTTP."""
    return jsonify(live=True)


@bp.get("/health/ready")
def ready() -> tuple[Response, int]:
    """Readiness: as /readyz (a model server answers a ping in time, this worker is not stopping)."""
    model, reason = readiness()
    if reason:
        return jsonify(ready=False, reason=reason), 503
    _remember(model)
    return jsonify(ready=True), 200


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    """The model's name, version, input and output."""
    model = _served_model(name, version)
    return jsonify(
        name=model,
        versions=[oip_codec.MODEL_VERSION],
        platform=SERVER_NAME,
        inputs=[oip_codec.INPUT_METADATA],
        outputs=[oip_codec.OUTPUT_METADATA],
    )


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> tuple[Response, int]:
    """Whether the model answers: 200 when ready, 503 when not."""
    served, reason = readiness()
    if reason:
        return jsonify(name=name, ready=False, reason=reason), 503
    _remember(served)
    model = _served_model(name, version)
    return jsonify(name=model, ready=True), 200


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """Classify the photos of the request's `image` input; answer their probabilities or k best classes."""
    cfg = _cfg()
    deadline, first = admit()
    tickets = [first]
    try:
        model = _served_model(name, version)
        asked = _parse(cfg)
        tickets += more_tickets(cfg, min(len(asked.images), FAN_OUT_THREADS) - 1)
        photos = [_photo(i, image, asked, deadline) for i, image in enumerate(asked.images)]
        checked = client_check("before_send")
        sent = all_sent(send_each(photos, cfg, tickets, client_maker(), checked, fan_out_pool()))
    finally:
        for ticket in tickets:
            ticket.close()
    for i, one in enumerate(sent):
        if not one.reply.ok:
            raise _for_photo(i, len(sent), error_for_reply(one.reply))
    request_id = asked.request_id or correlation.request_id()
    answers = [one.reply.predictions for one in sent]
    body = oip_codec.infer_response(model, request_id, answers, asked.classification)
    return jsonify(body)


def _parse(cfg: WebConfig) -> oip_codec.InferRequest:
    """The request's photos and what it asks, from a JSON body or one with a binary tensor."""
    body = request.get_data(cache=False)  # MAX_CONTENT_LENGTH applies (413)
    header_length = request.headers.get(oip_codec.HEADER_LENGTH)
    try:
        return oip_codec.parse_infer(body, header_length, cfg.max_images_per_request)
    except InferError as exc:
        raise BadRequest(str(exc)) from None


def _photo(index: int, image: bytes, asked: oip_codec.InferRequest, deadline: float) -> Photo:
    """One photo of the request, checked here; an unreadable one fails the request, naming it."""
    cfg = _cfg()
    try:
        img = imaging.open_image(image, cfg.max_image_pixels, cfg.max_image_side)
    except ImageError as exc:  # 400 even for a type it cannot read: the protocol's clients expect 400
        raise BadRequest(f"element {index} of input {oip_codec.INPUT!r}: {exc}") from None
    k = asked.classification or MAX_CLASSES  # the probabilities output carries every class
    rid = photo_request_id(correlation.request_id(), index, len(asked.images))
    return Photo(image, img, k, rid, deadline, time.perf_counter())


def _for_photo(index: int, count: int, error: HTTPException) -> HTTPException:
    """The error of one photo, naming it when the request has several."""
    if count > 1:
        error.description = f"element {index} of input {oip_codec.INPUT!r}: {error.description}"
    return error
