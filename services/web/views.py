"""The routes: the upload page, the form upload, the JSON predict API, health, readiness and metrics.

A classification is refused before any work (503 + Retry-After, nothing read, decoded or sent) when most of
its deadline went by before a thread took it, or when this process already has as many requests in the
model tier as the tier takes (admission.py); it is dropped when its client has gone.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)

from services import imaging
from services.config import WebConfig
from services.protocol import MAX_TOP_K
from services.web import correlation, metrics
from services.web.admission import Ticket
from services.web.classify import Photo, api_result, more_tickets, send_photo
from services.web.clients import FAN_OUT_THREADS, get_client
from services.web.errors import error_object, page_error, raise_for_reply
from services.web.front import ADMITTED, DOOR, DRAINING, REQUEST_START
from services.web.model_client import ModelTimeout, ModelUnavailable
from services.web.multi import Answer, Upload, classify_each
from services.web.tiers import admission

bp = Blueprint("web", __name__)
FIELD = "image"  # the multipart field (and the <input name>) carrying the photo
RAW_TYPES = ("application/octet-stream",)  # besides image/*: a raw body whose type is sniffed anyway
_HOW = f"send {imaging.ACCEPTED_PHRASE} as multipart/form-data in the field {FIELD!r}"
_HOW_API = (  # the API takes the raw body too
    f"send the photo as multipart/form-data in the field {FIELD!r}, "
    "or as the raw body with its type, e.g. Content-Type: image/jpeg"
)
_BUSY = "the model servers are busy; please try again in a moment"
# The classifications the worker's loop admits before they wait for a thread (see _install_door).
DOOR_ENDPOINTS = {"web.predict", "oip.infer"}

# A request that has waited max_queue_wait_ms, or this fraction of request_timeout_ms, before a thread took
# it is refused at once: the web tier is behind, and working on it would make the requests after it late too.
SHED_AFTER_FRACTION = 0.9
MAX_REQUEST_START_AGE_S = 86_400  # an older X-Request-Start is a broken clock or unit, not a wait


# Same-origin only: no CDN, no inline script; blob: for the preview; inline style for the bar widths.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _cfg() -> WebConfig:
    return current_app.config["ZEROLENS"]


@bp.app_context_processor
def _limits() -> dict[str, Any]:
    return {"max_upload_bytes": current_app.config["MAX_CONTENT_LENGTH"], "default_top_k": _cfg().top_k}


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")  # never sniff JSON or text into HTML
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _top_k() -> int:
    """top_k from the query string or the form, else the configured default; 400 when out of range."""
    raw = request.args.get("top_k")
    if raw is None and request.mimetype == "multipart/form-data":
        raw = request.form.get("top_k")
    if raw is None or raw.strip() == "":
        return _cfg().top_k
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_TOP_K:
        raise BadRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}, not {raw[:20]!r}")
    return value


def _form_uploads(how: str = _HOW) -> list[Upload]:
    """The photos and their file names from a multipart form, in order; 415 or 400 when there is none (`how`
    says what to send instead), 413 when there are more than max_images_per_request."""
    if request.mimetype != "multipart/form-data":
        if not request.mimetype:
            raise BadRequest(f"no photo in the request: {how}")
        article = "an" if request.mimetype[0] in "aeiou" else "a"
        raise UnsupportedMediaType(f"cannot read {article} {request.mimetype} body: {how}")
    uploads = request.files.getlist(FIELD)
    if not uploads:
        raise BadRequest(f"no file in the form field {FIELD!r}: choose {imaging.ACCEPTED_PHRASE}")
    limit = _cfg().max_images_per_request
    if len(uploads) > limit:
        raise RequestEntityTooLarge(
            f"the form has {len(uploads)} photos in the field {FIELD!r}: one request takes at most {limit}"
        )
    return [(upload.read(), upload.filename or "") for upload in uploads]  # in memory: see InMemoryRequest


def _check_upload(data: bytes, filename: str) -> None:
    """400 when the uploaded file is empty."""
    if not data:
        what = f"the file {filename!r}" if filename else "no file was chosen, the upload"
        raise BadRequest(f"{what} is empty: choose {imaging.ACCEPTED_PHRASE}")


def _api_uploads() -> list[Upload]:
    """The photos from a multipart form, or the photo of a raw image/* body."""
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype in RAW_TYPES:
        data = request.get_data(cache=False)  # MAX_CONTENT_LENGTH applies here too (413)
        if not data:
            raise BadRequest("the request body is empty: send the photo's bytes")
        return [(data, "")]
    return _form_uploads(_HOW_API)


def _request_id() -> str:
    """The caller's X-Request-ID when it is safe to reuse, else a new id (correlation.py), so logs on both
    tiers can be joined."""
    return correlation.request_id()


def parse_request_start(value: str) -> float | None:
    """Seconds since the epoch from an X-Request-Start value, None when it is not one.

    nginx writes "t=1700000000.123" (seconds); New Relic also accepts milliseconds and microseconds
    ("t=1700000000123", "t=1700000000123456"), and some proxies leave out the "t=".
    """
    text = value.strip().removeprefix("t=")
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    while number > 1e11:  # more than year 5000 in seconds: milliseconds, microseconds or nanoseconds
        number /= 1000
    return number


def request_arrived(now: float) -> float:
    """When the request arrived (time.time()): the earliest our worker or a proxy says, never after now.

    X-Request-Start may come from the client itself, not only from a proxy: it is honoured only to shorten
    the deadline (a start in the future counts as now), so a client can make its own request fail sooner
    but never buy itself more time.
    """
    arrived = now
    first_byte = request.environ.get(REQUEST_START)
    if type(first_byte) in (int, float) and math.isfinite(first_byte):
        arrived = min(arrived, first_byte)
    proxy = parse_request_start(request.headers.get("X-Request-Start", ""))
    if proxy is not None and now - proxy < MAX_REQUEST_START_AGE_S:
        arrived = min(arrived, proxy)
    return arrived


def request_deadline() -> float:
    """The request's deadline (time.time()), counted from its arrival; 503 now when most of it is gone."""
    cfg = _cfg()
    now = time.time()
    budget_s = cfg.request_timeout_ms / 1000
    arrived = request_arrived(now)
    if now - arrived >= min(SHED_AFTER_FRACTION * budget_s, cfg.max_queue_wait_ms / 1000):
        metrics.record_shed("waited")
        raise ServiceUnavailable(_BUSY, retry_after=cfg.retry_after_s)
    return arrived + budget_s


class ClientGone(Exception):
    """The client closed its connection: nobody is waiting for the answer."""


def _client_gone(conn: socket.socket | None) -> bool:
    """True when the client has closed its connection, as a peek at its socket reading end-of-file says.

    Only meaningful once the body has been read (before that, the peek sees the body). A client that
    half-closes its side while it waits for the answer looks gone too; HTTP clients do not do that.
    """
    if conn is None:  # not under gunicorn (the Flask test client)
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # connected, nothing more sent: waiting for us
    except ConnectionError:
        return True  # reset
    except (OSError, ValueError):
        return False  # cannot tell (a TLS socket refuses recv flags): assume it is there


def _check_client(stage: str) -> None:
    """Stop here (ClientGone) when the client has left: the work would be thrown away."""
    client_check(stage)()


def client_check(stage: str) -> Callable[[], None]:
    """A check that stops (ClientGone) when this request's client has left; callable from any thread."""
    conn = request.environ.get("gunicorn.socket")

    def check() -> None:
        if _client_gone(conn):
            metrics.record_dropped(stage)
            raise ClientGone(stage)

    return check


@bp.app_errorhandler(ClientGone)
def _answer_nobody(e: ClientGone) -> Response:
    # nginx's "client closed request": nobody reads it, but the access log and metrics show the drop
    return Response(status=499)


def admit() -> tuple[float, Ticket]:
    """The request's deadline and its place under the admission limit (taken by the worker's loop, or here);
    503 at once when it is late or the model tier is full."""
    cfg = _cfg()
    deadline = request_deadline()
    ticket = request.environ.get(ADMITTED) or admission(cfg).try_acquire()
    if ticket is None:
        metrics.record_shed("saturated")
        raise ServiceUnavailable(_BUSY, retry_after=cfg.retry_after_s)
    return deadline, ticket


def _admitted(read_uploads: Callable[[], list[Upload]]) -> list[Answer]:
    """Refuse the request before any work when it is late or the model tier is full, else classify its
    photos: one as ever (its error is the request's), several each on its own and all at once (multi.py)."""
    deadline, ticket = admit()
    tickets = [ticket]
    try:
        uploads = read_uploads()
        top_k = _top_k()
        if len(uploads) == 1:
            data, filename = uploads[0]
            _check_upload(data, filename)
            return [Answer(filename, result=_classify(data, top_k, deadline, ticket))]
        _check_client("before_decode")
        tickets += more_tickets(_cfg(), min(len(uploads), FAN_OUT_THREADS) - 1)
        before_send = client_check("before_send")
        return classify_each(uploads, top_k, deadline, tickets, _check_upload, before_send)
    finally:
        for taken in tickets:
            taken.close()


def _classify(data: bytes, top_k: int, deadline: float, ticket: Ticket) -> dict[str, Any]:
    """Check the photo here, classify it on a model server, and return the API's result object."""
    start = time.perf_counter()
    cfg = _cfg()
    _check_client("before_decode")
    img = imaging.open_image(data, cfg.max_image_pixels, cfg.max_image_side)  # ImageError → 400/415 here
    info = imaging.describe(img)
    client = get_client()
    photo = Photo(data, img, top_k, _request_id(), deadline, start)
    sent = send_photo(client, photo, cfg, before_send=partial(_check_client, "before_send"))
    reply = sent.reply
    ticket.answered(reply)
    raise_for_reply(reply)
    return api_result(sent, info)


@bp.get("/")
def index() -> str:
    """The upload page."""
    return render_template("index.html")


@bp.post("/uploader")
def uploader() -> Response:
    """Classify the photos posted by the page's form (works without JavaScript) and render the results:
    `results`, one {filename, result, error} per photo in upload order; `result`, `filename` and `error`
    for the first photo classified (or the first error when none was)."""
    answers = _admitted(_form_uploads)
    results = [
        {"filename": a.filename, "result": a.result, "error": page_error(a.error) if a.error else None}
        for a in answers
    ]
    first = next((a for a in answers if a.result is not None), None)
    single: dict[str, Any] = {"error": results[0]["error"]}
    if first is not None:
        single = {"result": first.result, "filename": first.filename}
    page = render_template("index.html", results=results, **single)
    return Response(page, mimetype="text/html")


@bp.record_once
def _install_door(state: BlueprintSetupState) -> None:
    """Let the worker's loop admit API classifications: a ticket before the request waits for a thread, or
    a 503 from the loop at once, however many requests wait for threads (the form's page keeps its HTML)."""
    app = state.app
    gate = partial(admission, app.config["ZEROLENS"])
    routes = app.url_map.bind("localhost")  # matches against the routes as they are when asked

    def door(method: bytes, target: bytes) -> Ticket | bool | None:
        try:  # the app's own routing: the loop's answer is about exactly the requests predict() serves
            endpoint, _ = routes.match(target.decode("latin-1"), method.decode("latin-1"))
        except HTTPException:  # not found, another method, a redirect: nothing to say
            return None
        if endpoint not in DOOR_ENDPOINTS:
            return None
        return gate().try_acquire() or False

    app.extensions[DOOR] = door


@bp.post("/api/v1/predict")
def predict() -> Response:
    """Classify a photo (multipart field `image`, or a raw image/* body) and answer JSON; several `image`
    parts: `{"results": [...]}`, each photo's result or `{"error": ...}` in order, 200 (multi.py)."""
    answers = _admitted(_api_uploads)
    if len(answers) == 1:
        return jsonify(answers[0].result)  # X-Request-ID: set on every response (correlation.py)
    return jsonify(results=[{"error": error_object(a.error)} if a.error else a.result for a in answers])


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers HTTP."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: a model server answers a ping within ready_timeout_ms, and this worker is not stopping."""
    model, reason = readiness()
    if reason:
        return jsonify(status="not ready", reason=reason), 503
    return jsonify(status="ready", model=model), 200


def readiness() -> tuple[str, str]:
    """(the model served, "") when a model server answers a ping in time and this worker is not stopping,
    else ("", why not)."""
    if request.environ.get(DRAINING):  # set by the worker (front.py) after SIGTERM
        return "", "stopping: finishing the requests in flight"
    try:
        reply = get_client().ping(_cfg().ready_timeout_ms)
    except (ModelUnavailable, ModelTimeout) as exc:
        return "", str(exc)
    if not reply.ok:
        return "", f"model server answered {reply.status}: {reply.error}"
    return reply.model, ""


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text exposition, summed over gunicorn workers."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
