"""Log lines of both tiers: JSON objects or console lines; each line about a request carries its id."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gunicorn.glogging import SafeAtoms

from services import logs, protocol
from services.config import ModelConfig, load
from services.model import pipeline as pipeline_module
from services.model.metrics import ServerMetrics
from services.model.pipeline import Pipeline
from services.protocol import Reply, Request, Status
from services.web.model_client import ModelUnavailable
from tests.support.environ import clean_environ
from tests.support.runtimes import UniformRuntime

REPO = Path(__file__).resolve().parents[2]
ACCESS_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s" rid=%({x-request-id}o)s'  # gunicorn.conf.py's

# The model server's logging, as its main() sets it up, in a fresh interpreter: stderr is what it wrote.
EMIT = textwrap.dedent(
    """
    import logging, sys
    from services import logs
    logs.configure(sys.argv[1])
    log = logging.getLogger("services.model.worker")
    with logs.request_context("rid-42"):
        log.info("worker-0: %s after %.1f ms", "OK", 12.5)
    log.info("idle")
    with logs.request_context("rid-43"):
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("request failed")
    """
)


def _emit(log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", EMIT, log_format],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr.splitlines()


def test_json_lines_parse_and_carry_the_request_id() -> None:
    first, idle, failed = (json.loads(line) for line in _emit("json") if line.startswith("{"))
    assert list(first)[:5] == ["time", "level", "logger", "process", "message"]
    assert first["message"] == "worker-0: OK after 12.5 ms" and first["request_id"] == "rid-42"
    assert first["level"] == "INFO" and first["logger"] == "services.model.worker"
    assert first["time"].endswith("+00:00")  # ISO 8601, UTC
    assert "request_id" not in idle  # no request bound: no field, not a null one
    assert failed["request_id"] == "rid-43" and "ZeroDivisionError" in failed["exc_info"]


def test_console_lines_end_with_the_request_id() -> None:
    lines = _emit("console")
    assert lines[0].endswith("services.model.worker worker-0: OK after 12.5 ms request_id=rid-42")
    assert lines[1].endswith("services.model.worker idle")
    assert lines[2].endswith("request failed request_id=rid-43") and "ZeroDivisionError" in lines[-1]


def test_access_lines_name_the_request_from_the_response_header() -> None:
    atoms = SafeAtoms(
        {
            "h": "10.0.0.7",
            "r": "POST /api/v1/predict HTTP/1.1",
            "m": "POST",
            "U": "/api/v1/predict",
            "s": "200",
            "B": 482,
            "M": 19,
            "a": "curl/8.5.0",
            "{x-request-id}o": "checkout-7f3a",
        }
    )
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, ACCESS_FORMAT, (atoms,), None)
    assert logs.AccessFilter().filter(record)
    line = json.loads(logs.json_formatter().format(record))
    assert (
        line["message"]
        == '10.0.0.7 "POST /api/v1/predict HTTP/1.1" 200 482 19ms "curl/8.5.0" rid=checkout-7f3a'
    )
    assert line["request_id"] == "checkout-7f3a"
    assert (line["method"], line["path"], line["status"], line["duration_ms"]) == (
        "POST",
        "/api/v1/predict",
        200,
        19,
    )


def test_gunicorn_config_sends_its_own_loggers_through_the_same_formatter() -> None:
    config = logs.gunicorn_config("json", "warning")
    assert config["loggers"]["gunicorn.error"] == {
        "level": "WARNING",
        "handlers": ["console"],
        "propagate": False,
    }
    assert config["handlers"]["access"]["filters"] == ["access"]
    assert config["formatters"]["line"] == config["formatters"]["access"] == {"()": logs.json_formatter}


def test_request_context_nests_and_restores() -> None:
    with logs.request_context("outer"):
        with logs.request_context("inner"):
            assert logs.current_request_id.get() == "inner"
        assert logs.current_request_id.get() == "outer"
    assert logs.current_request_id.get() is None


# --- the web tier ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/healthz"), ("GET", "/"), ("GET", "/nowhere"), ("POST", "/api/v1/predict")]
)
def test_every_response_names_its_request(client, method: str, path: str) -> None:
    given = client.open(path, method=method, headers={"X-Request-ID": "caller-1"})
    made = client.open(path, method=method)
    assert given.headers["X-Request-ID"] == "caller-1"
    assert re.fullmatch("[0-9a-f]{32}", made.headers["X-Request-ID"])


def test_web_lines_about_a_request_carry_its_id(client, fake_model, cat_jpeg) -> None:
    handler = _Captured()
    logger = logging.getLogger("services.web.errors")
    logger.addHandler(handler)
    fake_model.raises = ModelUnavailable("no model server reachable")
    try:
        response = client.post(
            "/api/v1/predict", data={"image": cat_jpeg.as_file()}, headers={"X-Request-ID": "web-rid-9"}
        )
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 503 and response.headers["X-Request-ID"] == "web-rid-9"
    (record,) = handler.records
    assert record.request_id == "web-rid-9"
    assert logs.current_request_id.get() is None  # unbound again: the thread's next request starts clean


# --- the model server's decoder thread ------------------------------------------------------------------


class _Captured(logging.Handler):
    """Keeps the records that reach it, through the request id filter the real handlers have."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(logs.RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[_Captured]:
    handler = _Captured()
    logger = logging.getLogger("services.model.pipeline")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_a_decoder_thread_logs_with_the_request_id(captured, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()  # held until handle() returns, so the failure comes on the decoder thread

    def broken_decoder(*args: object) -> None:
        gate.wait(10)
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(pipeline_module, "decode_image", broken_decoder)
    cfg = load(ModelConfig, overrides={"decode_threads": 1}, environ={})
    pipeline = Pipeline(cfg, UniformRuntime(4), ServerMetrics()).start()
    replies: list[Reply] = []
    answered = threading.Event()

    def done(reply: Reply) -> None:
        replies.append(reply)
        answered.set()

    try:
        request = Request("decode-rid-1", protocol.deadline_after_ms(5000), image=b"\xff\xd8\xff")
        pipeline.handle(request, time.monotonic(), done)
        gate.set()
        assert answered.wait(10)
    finally:
        pipeline.close()
    assert replies[0].status is Status.INTERNAL
    (record,) = captured.records
    assert record.threadName.startswith("decode") and record.request_id == "decode-rid-1"
