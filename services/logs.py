"""Logging for both tiers: console lines or JSON objects, and each line about a request carrying its id."""

from __future__ import annotations

import contextvars
import logging
import logging.config
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# The request the running code works on: set while a tier handles one (a web request, a decoded model
# request on a worker, decoder or batcher thread), read by RequestIdFilter. A contextvar, not a thread-local,
# so a block bound with request_context() never leaks its id into the thread's next request.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "zerolens_request_id", default=None
)

WEB_CONSOLE = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"  # gunicorn's own layout
MODEL_CONSOLE = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The fields of every JSON line, in this order, then any extra ones (request_id, exc_info, ...).
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
# gunicorn's access-log atoms worth a JSON field of their own (the whole line is the message too).
ACCESS_FIELDS = {"m": "method", "U": "path", "s": "status", "M": "duration_ms", "B": "bytes"}
REQUEST_ID_ATOM = "{x-request-id}o"  # the response's X-Request-ID header, which the web tier always sets


class request_context:  # noqa: N801  (used like a function: `with request_context(rid):`)
    """Within the block, log lines carry `rid` as request_id, on whatever thread runs it."""

    __slots__ = ("_rid", "_token")

    def __init__(self, rid: str | None) -> None:
        self._rid = rid or None

    def __enter__(self) -> None:
        self._token = current_request_id.set(self._rid)

    def __exit__(self, *exc: object) -> None:
        current_request_id.reset(self._token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to a record made while a request is bound (an explicit `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = current_request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


class AccessFilter(logging.Filter):
    """gunicorn's access lines: the request id and a few atoms (status, path, ...) as fields of their own.

    gunicorn logs the access line after the response is sent, when no request is bound any more; the id is
    the response's X-Request-ID header among its atoms.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if not isinstance(atoms, Mapping):
            return True
        rid = atoms.get(REQUEST_ID_ATOM)
        if rid and rid != "-":
            record.request_id = rid
        for atom, name in ACCESS_FIELDS.items():
            value = atoms.get(atom)
            if value is not None and value != "-":
                setattr(record, name, int(value) if str(value).isdigit() else value)
        return True


class ConsoleFormatter(logging.Formatter):
    """A readable line, with ` request_id=<id>` appended when the line is about a request."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", None)
        return line if rid is None else f"{line} request_id={rid}"


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (ISO 8601, UTC), level, logger, process, message, then the extras."""
    from pythonjsonlogger.json import JsonFormatter  # only where JSON lines are asked for

    class _Formatter(JsonFormatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
            return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    return _Formatter(JSON_FIELDS, rename_fields=JSON_NAMES)


def _line_formatter(log_format: str, console: str) -> dict[str, Any]:
    if log_format == "json":
        return {"()": json_formatter}
    return {"()": ConsoleFormatter, "fmt": console}


def logging_config(
    log_format: str, level: str = "INFO", console: str = MODEL_CONSOLE, stream: str = "ext://sys.stderr"
) -> dict[str, Any]:
    """A logging.config.dictConfig mapping: every line in `log_format`, with request ids; `level` applies
    to zerolens's own loggers, while libraries stay at INFO or above (their debug lines are noise here)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"line": _line_formatter(log_format, console)},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "filters": ["request_id"],
                "stream": stream,
            },
        },
        "root": {"level": "INFO" if level.upper() == "DEBUG" else level, "handlers": ["console"]},
        "loggers": {"services": {"level": level}},
    }


def gunicorn_config(log_format: str, level: str) -> dict[str, Any]:
    """gunicorn's logconfig_dict: its error and access logs and the app's loggers, all on stdout."""
    config = logging_config(log_format, "INFO", WEB_CONSOLE, "ext://sys.stdout")
    # In console format the access line names the id itself (access_log_format's rid=).
    access = {"()": json_formatter} if log_format == "json" else {"format": "%(message)s"}
    config["filters"]["access"] = {"()": AccessFilter}
    config["formatters"]["access"] = access
    config["handlers"]["access"] = {
        "class": "logging.StreamHandler",
        "formatter": "access",
        "filters": ["access"],
        "stream": "ext://sys.stdout",
    }
    config["loggers"] |= {
        "gunicorn.error": {"level": level.upper(), "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    }
    return config


def configure(log_format: str, level: str = "INFO") -> None:
    """Send this process's log lines to stderr in `log_format` (the model server; gunicorn has its own)."""
    logging.config.dictConfig(logging_config(log_format, level))
