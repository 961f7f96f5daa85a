"""The web tier's application factory: gunicorn runs 'services.web:create_app()'."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import IO, Any

from flask import Flask, Request, Response, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from services.config import ConfigError, WebConfig, load
from services.web import discovery, multipart

# After an error, what is left of the request body is read and dropped, up to these bounds, before the
# connection is closed or reused (discard_body).
DISCARD_MAX_BYTES = 64 << 20
DISCARD_MAX_S = 5.0
FORM_FIELDS = 2  # parts a form may have besides its photos: top_k, and one more a client adds


class _FormDataParser(FormDataParser):
    def _parse_multipart(
        self, stream: IO[bytes], mimetype: str, content_length: int | None, options: dict[str, str]
    ) -> tuple[IO[bytes], Any, Any]:
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")  # as werkzeug: an empty form
        body = stream.read()  # the body in memory (InMemoryRequest): the same bytes object, not a copy
        form, files = multipart.parse(body, boundary, self.max_form_parts, self.max_form_memory_size)
        return stream, form, files


class InMemoryRequest(Request):
    """A request whose body is read into memory, whole and within MAX_CONTENT_LENGTH, before it is used.

    Its multipart parts are slices of that body (services/web/multipart.py), never spooled to disk as
    werkzeug does above 500 KB (a read-only root filesystem, nothing to clean up, no photo left behind).
    Memory stays bounded because MAX_CONTENT_LENGTH caps the whole body, with or without a
    Content-Length, before it is parsed.
    """

    form_data_parser_class = _FormDataParser

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        self._read_body()
        return super().get_data(cache, as_text, parse_form_data)

    def _get_stream_for_parsing(self) -> IO[bytes]:
        self._read_body()
        return super()._get_stream_for_parsing()

    def _read_body(self) -> None:
        """Read the body in one call and keep it; the parsers then work from memory. 413 when too large.

        Werkzeug reads 8 KiB (raw body) or 64 KiB (multipart) at a time, and each small read makes
        gunicorn copy all it has read ahead: quadratic in the body size (costs in docs/performance.md).
        """
        if getattr(self, "_cached_data", None) is not None:
            return
        length = self.content_length
        if length is None:
            self._read_unsized_body()
            return
        stream, parts = self.stream, []  # `stream` refuses a body over MAX_CONTENT_LENGTH (413)
        while length > 0 and (part := stream.read(length)):
            parts.append(part)
            length -= len(part)
        self._cached_data = parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_unsized_body(self) -> None:
        """Read a chunked body: one byte past MAX_CONTENT_LENGTH means 413.

        Werkzeug's own stream stops such a body at the limit without an error, so the first
        MAX_CONTENT_LENGTH bytes of a bigger upload would be classified as if they were all of it.
        """
        if "wsgi.input_terminated" not in self.environ:
            return  # the server does not end the stream itself: werkzeug's path (an empty body)
        limit = self.max_content_length
        try:
            data = self.environ["wsgi.input"].read(-1 if limit is None else limit + 1)
        except Exception as exc:  # gunicorn's own errors: a malformed chunk, a body cut short
            raise BadRequest("the chunked request body is malformed or was cut short") from exc
        if limit is not None and len(data) > limit:
            raise RequestEntityTooLarge()
        self._cached_data = data


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure the web app.

    `test_config` holds WebConfig settings in lower case (e.g. model_server) and Flask settings in upper
    case (e.g. TESTING, or MODEL_CLIENT: a factory `f(WebConfig) -> client` that replaces the ZeroMQ client).
    """
    app = Flask(__name__)
    app.request_class = InMemoryRequest

    # defaults, then ZEROLENS_CONFIG (YAML), then ZEROLENS_* variables, then the test settings
    test_config = dict(test_config or {})
    flask_settings = {key: value for key, value in test_config.items() if key.isupper()}
    cfg = load(WebConfig, overrides={key: value for key, value in test_config.items() if not key.isupper()})
    try:
        discovery.parse(cfg.model_server)  # a bad address fails at start, not on the first request
    except ValueError as exc:
        raise ConfigError(f"model_server = {cfg.model_server!r}: {exc}") from None
    app.config.from_mapping(
        ZEROLENS=cfg,
        # the whole body: a bigger upload is refused with 413 before it is parsed
        MAX_CONTENT_LENGTH=cfg.max_upload_bytes,
        # the form has up to max_images_per_request photos and a field or two: refuse a flood of parts.
        # MAX_FORM_MEMORY_SIZE (Flask's 500 kB) bounds each text field and each part's headers.
        MAX_FORM_PARTS=cfg.max_images_per_request + FORM_FIELDS,
    )
    app.config.update(flask_settings)
    app.json.sort_keys = False  # keep the API's field order as written (request_id first)
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True  # tidy HTML from indented templates

    # imported here so that importing the package creates nothing and pulls in no routes
    from services.web import apidocs, clients, correlation, errors, metrics, oip, views

    app.register_blueprint(views.bp)
    app.register_blueprint(oip.bp)
    app.register_blueprint(apidocs.bp)
    app.after_request(_discard_unread_body)
    errors.register_error_handlers(app)
    clients.init_app(app)
    correlation.init_app(app)  # the request id on every response and log line
    metrics.init_app(app)
    return app


def _discard_unread_body(response: Response) -> Response:
    """After an error response has been sent, drop what the client still sends of its body."""
    if response.status_code >= 400:
        response.call_on_close(lambda environ=request.environ: discard_body(environ))
    return response


def discard_body(environ: dict[str, Any]) -> int:
    """Read and drop the rest of the request body, within DISCARD_MAX_BYTES and DISCARD_MAX_S; bytes dropped.

    A client that sends its whole body before it reads the answer (Python's urllib, many SDKs) gets a
    broken pipe or a reset instead of the 413 when the server closes with body bytes unread: the kernel
    answers them with RST. gunicorn itself drops at most 64 KiB. Runs after the response was sent, so the
    answer is not delayed; a body that cannot fit the bound is not read at all (its client gets the reset
    anyway). Only under gunicorn, whose socket gives the reads a deadline.
    """
    sock, stream = environ.get("gunicorn.socket"), environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH", "")
    if sock is None or stream is None or (length.isdigit() and int(length) > DISCARD_MAX_BYTES):
        return 0
    deadline, dropped = time.monotonic() + DISCARD_MAX_S, 0
    previous = sock.gettimeout()
    try:
        with contextlib.suppress(Exception):  # a timeout, a reset, a malformed chunk: gunicorn then closes
            while dropped < DISCARD_MAX_BYTES and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = stream.read(min(256 << 10, DISCARD_MAX_BYTES - dropped))
                if not data:
                    break
                dropped += len(data)
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)
    return dropped
