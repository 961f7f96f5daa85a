"""The routes: the upload page, the form upload, the JSON predict API, health, readiness and metrics."""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from services import imaging
from services.config import WebConfig
from services.protocol import MAX_TOP_K, Status
from services.web import metrics
from services.web.errors import raise_for_reply
from services.web.model_client import ModelTimeout, ModelUnavailable, get_client

bp = Blueprint("web", __name__)

FIELD = "image"  # the multipart field (and the <input name>) carrying the photo
RAW_TYPES = ("application/octet-stream",)  # besides image/*: a raw body whose type is sniffed anyway
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what an incoming X-Request-ID may look like
_HOW = f"send a JPEG or PNG photo as multipart/form-data in the field {FIELD!r}"


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


def _form_upload() -> tuple[bytes, str]:
    """The photo and its file name from a multipart form; 400 when missing or empty."""
    if request.mimetype != "multipart/form-data":
        if not request.mimetype:
            raise BadRequest(f"no photo in the request: {_HOW}")
        raise UnsupportedMediaType(f"cannot read a {request.mimetype} body: {_HOW}")
    upload = request.files.get(FIELD)
    if upload is None:
        raise BadRequest(f"no file in the form field {FIELD!r}: choose a JPEG or PNG photo")
    data = upload.read()  # in memory: see InMemoryRequest in __init__.py
    if not data:
        what = f"the file {upload.filename!r}" if upload.filename else "no file was chosen, the upload"
        raise BadRequest(f"{what} is empty: choose a JPEG or PNG photo")
    return data, upload.filename or ""


def _api_upload() -> tuple[bytes, str]:
    """The photo from a multipart form or from a raw image/* body."""
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype in RAW_TYPES:
        data = request.get_data(cache=False)  # MAX_CONTENT_LENGTH applies here too (413)
        if not data:
            raise BadRequest("the request body is empty: send the photo's bytes")
        return data, ""
    return _form_upload()


def _request_id() -> str | None:
    """The caller's X-Request-ID when it is safe to reuse, so logs on both tiers can be joined."""
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.fullmatch(given) else None


def _classify(data: bytes, top_k: int) -> dict[str, Any]:
    """Check the photo here, classify it on a model server, and return the API's result object."""
    start = time.perf_counter()
    cfg = _cfg()
    img = imaging.open_image(data, cfg.max_image_pixels)  # ImageError → 400/415 before the network
    info = imaging.describe(img)
    client = get_client()
    request_id = _request_id()
    spec = client.input_spec() if cfg.decode_in_web else None
    reply = None
    if spec is not None:
        size, crop_fraction = spec
        pixels = imaging.fit(img, size, crop_fraction).tobytes()  # the image checked above, opened once
        sent = time.perf_counter()
        reply = client.classify(pixels, top_k, request_id=request_id, shape=(size, size, 3))
        if reply.status is Status.BAD_REQUEST:  # the model (and its input size) changed under us
            reply = spec = None
    if reply is None:  # the model server decodes the upload
        sent = time.perf_counter()
        reply = client.classify(data, top_k, request_id=request_id)
    done = time.perf_counter()
    raise_for_reply(reply)
    timings = dict(reply.timings_ms)  # the server's own: queue, preprocess, inference, total
    if spec is not None:
        timings["preprocess"] = round((sent - start) * 1000, 3)  # done here, not on the model server
    timings["model_roundtrip_ms"] = round((done - sent) * 1000, 3)
    timings["total_ms"] = round((time.perf_counter() - start) * 1000, 3)  # web side, upload in memory → reply
    return {
        "request_id": reply.request_id,
        "predictions": [
            {"label": p.label, "index": p.index, "probability": p.probability} for p in reply.predictions
        ],
        "model": reply.model,
        "batch_size": reply.batch_size,
        "image": {"format": info.format, "width": info.width, "height": info.height},
        "timings_ms": timings,
    }


@bp.get("/")
def index() -> str:
    """The upload page."""
    return render_template("index.html")


@bp.post("/uploader")
def uploader() -> Response:
    """Classify a photo posted by the page's form (works without JavaScript) and render the results."""
    data, filename = _form_upload()
    result = _classify(data, _top_k())
    response = Response(render_template("index.html", result=result, filename=filename), mimetype="text/html")
    response.headers["X-Request-ID"] = result["request_id"]
    return response


@bp.post("/api/v1/predict")
def predict() -> Response:
    """Classify a photo (multipart field `image`, or a raw image/* body) and answer JSON."""
    data, _ = _api_upload()
    result = _classify(data, _top_k())
    response = jsonify(result)
    response.headers["X-Request-ID"] = result["request_id"]
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers HTTP."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: a model server answers a ping within ready_timeout_ms, and this worker is not stopping."""
    if request.environ.get("zerolens.draining"):  # set by services/web/front.py after SIGTERM
        return jsonify(status="not ready", reason="stopping: finishing the requests in flight"), 503
    try:
        reply = get_client().ping(_cfg().ready_timeout_ms)
    except (ModelUnavailable, ModelTimeout) as exc:
        return jsonify(status="not ready", reason=str(exc)), 503
    if not reply.ok:
        return jsonify(status="not ready", reason=f"model server answered {reply.status}: {reply.error}"), 503
    return jsonify(status="ready", model=reply.model), 200


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text exposition, summed over gunicorn workers."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
