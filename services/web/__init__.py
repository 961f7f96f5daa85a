"""The web tier's application factory: gunicorn runs 'services.web:create_app()'."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import IO, Any

from flask import Flask, Request

from services.config import ConfigError, WebConfig, load
from services.web import discovery


class InMemoryRequest(Request):
    """A request whose multipart file parts stay in memory.

    Werkzeug spools file parts over 500 KB to a temporary file; zerolens never writes uploads to disk
    (a read-only root filesystem, nothing to clean up, no photo left behind). Memory stays bounded because
    MAX_CONTENT_LENGTH caps the whole body before it is parsed.
    """

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        self._read_body()
        return super().get_data(cache, as_text, parse_form_data)

    def _get_stream_for_parsing(self) -> IO[bytes]:
        self._read_body()
        return super()._get_stream_for_parsing()

    def _read_body(self) -> None:
        """Read a body of known length in one call and keep it; the parsers then work from memory.

        Werkzeug reads 8 KiB (raw body) or 64 KiB (multipart) at a time, and each small read makes
        gunicorn copy all it has read ahead: quadratic in the body size (a 1.6 MB raw body: ~0.7 core-ms).
        """
        length = self.content_length
        if getattr(self, "_cached_data", None) is not None or not length:
            return  # already read, empty, or chunked (werkzeug's streaming path)
        stream, parts = self.stream, []  # `stream` refuses a body over MAX_CONTENT_LENGTH (413)
        while length > 0 and (part := stream.read(length)):
            parts.append(part)
            length -= len(part)
        self._cached_data = parts[0] if len(parts) == 1 else b"".join(parts)

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


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
        # the form has one file and a field or two: refuse a flood of parts. MAX_FORM_MEMORY_SIZE stays at
        # Flask's 500 kB: Werkzeug checks it against its parse buffer for file parts too; less breaks uploads.
        MAX_FORM_PARTS=16,
    )
    app.config.update(flask_settings)
    app.json.sort_keys = False  # keep the API's field order as written (request_id first)
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True  # tidy HTML from indented templates

    # imported here so that importing the package creates nothing and pulls in no routes
    from services.web import errors, metrics, model_client, views

    app.register_blueprint(views.bp)
    errors.register_error_handlers(app)
    model_client.init_app(app)
    metrics.init_app(app)
    return app
