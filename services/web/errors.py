"""Every failure as an HTTP answer: JSON for the API and JSON clients, else the upload page with a message.

Data flow and where each failure is decided:

    upload bytes ──► web checks (imaging.open_image) ──► model server ──► Reply.status
    http:   request line too long 414, too many or too long headers 431 (gunicorn, plain text)
    web:    empty or missing 400, not an accepted type 415, bad header or bomb 400, and 413 naming the limit:
            the body (with or without Content-Length), the number of form parts, a form field's size;
            the worker's decode memory in use by other photos for too long 503 + Retry-After
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
    MethodNotAllowed,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)

from services.decode_budget import DecodeBusy
from services.imaging import ImageError
from services.protocol import Reply, Status
from services.web.model_client import ModelTimeout, ModelUnavailable
from services.web.multipart import FormFieldTooLarge, TooManyParts

log = logging.getLogger(__name__)

_BUSY = "the model servers are busy; please try again in a moment"
_HOW = "send the photos in the field 'image', with top_k as a query parameter or a short field"
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
            photos = config["ZEROLENS"].max_images_per_request
            return f"the form has more than {config['MAX_FORM_PARTS']} parts: {_HOW}, at most {photos} photos"
        if isinstance(e, FormFieldTooLarge):
            limit = _human_bytes(config["MAX_FORM_MEMORY_SIZE"])
            return f"a form field or a part's headers are larger than the {limit} limit: {_HOW}"
        return f"the upload is larger than the {_human_bytes(config['MAX_CONTENT_LENGTH'])} limit"
    if isinstance(e, MethodNotAllowed) and e.description == MethodNotAllowed.description:
        return _method_not_allowed(e)
    return e.description or e.name


def _method_not_allowed(e: MethodNotAllowed) -> str:
    """Which methods the path takes (as its Allow header says), instead of werkzeug's generic sentence."""
    methods = [m for m in e.valid_methods or () if m not in ("HEAD", "OPTIONS")]  # added to every route
    if methods == ["POST"]:  # every POST-only route classifies photos: the upload form and both APIs
        return f"{request.method} is not allowed here: POST {request.path} takes a photo"
    return f"{request.method} is not allowed here: use {' or '.join(methods)} {request.path}"


def error_object(e: HTTPException) -> dict[str, object]:
    """The API's error object for an HTTP error: its code, the status's name and the message."""
    status = e.name.upper().replace(" ", "_").replace("-", "_")
    return {"code": e.code, "status": status, "message": _describe(e)}


def page_error(e: HTTPException) -> dict[str, object]:
    """The upload page's error for an HTTP error: its code, title and message."""
    return {"code": e.code, "title": e.name, "message": _describe(e)}


def handle_http_exception(e: HTTPException) -> Response | HTTPException:
    """Render any HTTP error as JSON or as the upload page, keeping headers such as Retry-After and Allow."""
    if e.code is None:  # not an error (e.g. a routing redirect): let Flask answer it
        return e
    if request.path == "/v2" or request.path.startswith("/v2/"):
        response = jsonify(error=_describe(e))  # the Open Inference Protocol's error body
    elif wants_json():
        response = jsonify(error=error_object(e))
    else:
        page = render_template("index.html", error=page_error(e))
        response = Response(page, mimetype="text/html")
    response.status_code = e.code
    for name, value in e.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def http_error(e: Exception) -> HTTPException:
    """The HTTP error for a bad image or a model failure (an HTTP error stays itself).

    :raise: `e` itself when it is none of these: a bug, for Flask's 500.
    """
    if isinstance(e, HTTPException):
        return e
    if isinstance(e, ImageError):
        return (UnsupportedMediaType if e.unsupported else BadRequest)(str(e))
    if isinstance(e, ModelUnavailable):
        log.warning("model unavailable: %s", e)
        message = "no model server is available right now; please try again in a moment"
        return ServiceUnavailable(message, retry_after=_retry_after())
    if isinstance(e, ModelTimeout):
        log.warning("model timeout: %s", e)
        return GatewayTimeout("the model server did not answer in time; please try again")
    if isinstance(e, DecodeBusy):  # overload, not a bad photo: the same photo succeeds a moment later
        log.warning("decode budget busy: %s", e)
        message = "the server is busy decoding other photos; please try again in a moment"
        return ServiceUnavailable(message, retry_after=_retry_after())
    raise e


def _failure(e: Exception) -> Response | HTTPException:
    return handle_http_exception(http_error(e))


def register_error_handlers(app: Flask) -> None:
    """Route every HTTP error, bad image and model failure through one renderer."""
    app.register_error_handler(HTTPException, handle_http_exception)
    for failure in (ImageError, ModelUnavailable, ModelTimeout, DecodeBusy):
        app.register_error_handler(failure, _failure)
