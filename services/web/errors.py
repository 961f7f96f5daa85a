"""Every failure as an HTTP answer: JSON for the API and JSON clients, else the upload page with a message.

Data flow and where each failure is decided:

    upload bytes ──► web checks (imaging.open_image) ──► model server ──► Reply.status
    http:   request line too long 414, too many or too long headers 431 (gunicorn, plain text)
    web:    empty or missing 400, not JPEG/PNG 415, bad header or bomb 400, and 413 naming the limit:
            the body (with or without Content-Length), the number of form parts, a form field's size
    server: BAD_IMAGE 400, BAD_REQUEST 502, TOO_LARGE 413, OVERLOADED 503 + Retry-After,
            DEADLINE_EXCEEDED 504, INTERNAL 502
    client: no answer after the retries 503 + Retry-After, overall deadline passed 504
"""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    HTTPException,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)

from services.imaging import ImageError
from services.protocol import Reply, Status
from services.web import FormFieldTooLarge, TooManyParts
from services.web.model_client import ModelTimeout, ModelUnavailable

log = logging.getLogger(__name__)

_BUSY = "the model servers are busy; please try again in a moment"
_HOW = "send the photo alone in the field 'image', with top_k as a query parameter or a short field"
_MESSAGES = {  # what a user reads for each non-OK reply; the server's detail is appended where it helps
    Status.BAD_IMAGE: (BadRequest, "the image could not be decoded"),
    # The web tier built the request, so a refusal means the tiers disagree (e.g. protocol versions).
    Status.BAD_REQUEST: (BadGateway, "the model server refused the request"),
    Status.TOO_LARGE: (RequestEntityTooLarge, "the image is too large for the model server"),
    Status.OVERLOADED: (ServiceUnavailable, _BUSY),
    Status.DEADLINE_EXCEEDED: (GatewayTimeout, "the model server could not answer in time"),
    Status.INTERNAL: (BadGateway, "the model server failed to classify the image"),
}


def _retry_after() -> int:
    return current_app.config["ZEROLENS"].retry_after_s


def error_for_reply(reply: Reply) -> HTTPException:
    """The HTTP error for a non-OK model reply."""
    kind, message = _MESSAGES[reply.status]
    if reply.status is Status.INTERNAL:
        log.error("request %s: model server error: %s", reply.request_id, reply.error)  # not shown to users
    elif reply.status is Status.BAD_IMAGE and reply.error:
        message = reply.error  # imaging's own words ("cannot decode image: ...") are meant for users
    elif reply.error and reply.status is not Status.OVERLOADED:
        message = f"{message}: {reply.error}"
    if kind is ServiceUnavailable:
        return ServiceUnavailable(message, retry_after=_retry_after())
    return kind(message)


def raise_for_reply(reply: Reply) -> None:
    """Raise the HTTP error for a non-OK reply; do nothing for OK."""
    if reply.status is not Status.OK:
        raise error_for_reply(reply)


def wants_json() -> bool:
    """True for the API and for clients that prefer JSON over HTML."""
    if request.path.startswith("/api/"):
        return True
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"


def _human_bytes(size: float) -> str:
    unit = "bytes"
    for bigger in ("KB", "MB"):  # MB is the largest unit: larger sizes stay in MB
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.3g} {unit}" if size < 100 else f"{size:.0f} {unit}"


def _describe(e: HTTPException) -> str:
    if isinstance(e, RequestEntityTooLarge) and e.description == RequestEntityTooLarge.description:
        config = current_app.config  # each 413 names the limit that was hit
        if isinstance(e, TooManyParts):
            return f"the form has more than {config['MAX_FORM_PARTS']} parts: {_HOW}"
        if isinstance(e, FormFieldTooLarge):
            limit = _human_bytes(config["MAX_FORM_MEMORY_SIZE"])
            return f"a form field or a part's headers are larger than the {limit} limit: {_HOW}"
        return f"the upload is larger than the {_human_bytes(config['MAX_CONTENT_LENGTH'])} limit"
    return e.description or e.name


def handle_http_exception(e: HTTPException) -> Response | HTTPException:
    """Render any HTTP error as JSON or as the upload page, keeping headers such as Retry-After and Allow."""
    if e.code is None:  # not an error (e.g. a routing redirect): let Flask answer it
        return e
    message = _describe(e)
    status = e.name.upper().replace(" ", "_").replace("-", "_")
    if request.path == "/v2" or request.path.startswith("/v2/"):
        response = jsonify(error=message)  # the Open Inference Protocol's error body
    elif wants_json():
        response = jsonify(error={"code": e.code, "status": status, "message": message})
    else:
        page = render_template("index.html", error={"code": e.code, "title": e.name, "message": message})
        response = Response(page, mimetype="text/html")
    response.status_code = e.code
    for name, value in e.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _image_error(e: ImageError) -> Response | HTTPException:
    kind = UnsupportedMediaType if e.unsupported else BadRequest
    return handle_http_exception(kind(str(e)))


def _unavailable(e: ModelUnavailable) -> Response | HTTPException:
    log.warning("model unavailable: %s", e)
    message = "no model server is available right now; please try again in a moment"
    return handle_http_exception(ServiceUnavailable(message, retry_after=_retry_after()))


def _timeout(e: ModelTimeout) -> Response | HTTPException:
    log.warning("model timeout: %s", e)
    return handle_http_exception(GatewayTimeout("the model server did not answer in time; please try again"))


def register_error_handlers(app: Flask) -> None:
    """Route every HTTP error, bad image and model failure through one renderer."""
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ImageError, _image_error)
    app.register_error_handler(ModelUnavailable, _unavailable)
    app.register_error_handler(ModelTimeout, _timeout)
