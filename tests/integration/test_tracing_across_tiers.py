"""One trace across both tiers: the Flask app with its real model client and a model server in this process
(fake runtime) over loopback, every span kept in memory; then the real servers exporting to an OTLP stub."""

from __future__ import annotations

import gzip
import http.server
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services import config
from services.config import ModelConfig, WebConfig
from services.model.metrics import ServerMetrics
from services.model.server import ModelServer
from services.web import create_app, tiers
from services.web.model_client import ModelClient
from tests.support.runtimes import UniformRuntime
from tests.support.servers import Proc, model_server, web_server
from tests.support.spans import by_name, parent_of, recording_spans, span_id

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.setattr(tiers, "_tiers", {})  # what another test's client learnt of a tier on a reused port
    with recording_spans() as exporter:
        yield exporter


@pytest.fixture
def in_process_server(spans: InMemorySpanExporter) -> Iterator[ModelServer]:
    """A model server on a free loopback port, made after tracing is on (its pipeline asks once)."""
    overrides = {"host": "127.0.0.1", "port": 0, "zmq_security": "plaintext", "max_batch_delay_ms": 1.0}
    cfg = config.load(ModelConfig, overrides=overrides, environ={})
    server = ModelServer(cfg, UniformRuntime(), ServerMetrics()).start()
    yield server
    server.stop(drain_timeout_s=5)


@pytest.fixture
def post(clean_env: None, in_process_server: ModelServer) -> Iterator[Callable[..., Any]]:
    """POST a photo to the app, whose model client talks to in_process_server; returns the response."""
    settings = {"model_server": f"127.0.0.1:{in_process_server.port}", "zmq_security": "plaintext"}
    with zmq.Context() as context:
        clients: list[ModelClient] = []

        def post(photo: bytes, headers: dict[str, str], **extra: Any) -> Any:
            def client_for(cfg: WebConfig) -> ModelClient:
                clients.append(ModelClient(cfg, context))
                return clients[-1]

            app = create_app({"TESTING": True, "MODEL_CLIENT": client_for, **settings, **extra})
            with app.test_client() as client:
                return client.post("/api/v1/predict", data=photo, content_type="image/jpeg", headers=headers)

        yield post
        for client in clients:
            client.close()


def _one(named: dict[str, list[ReadableSpan]], name: str, kind: SpanKind) -> ReadableSpan:
    (span,) = [span for span in named.get(name, []) if span.kind is kind]
    return span


def test_one_trace_spans_both_tiers(spans, post, cat_jpeg) -> None:
    response = post(cat_jpeg.data, {"X-Request-ID": "trace-it-1"}, decode_in_web=False)
    assert response.status_code == 200, response.get_json()
    named = by_name(spans)
    web = _one(named, "POST /api/v1/predict", SpanKind.SERVER)
    call = _one(named, "zerolens.model/classify", SpanKind.CLIENT)
    model = _one(named, "zerolens.model/classify", SpanKind.SERVER)
    assert web.parent is None  # no traceparent came in: the web tier started the trace
    assert len({span.context.trace_id for span in spans.get_finished_spans()}) == 1
    assert parent_of(call) == span_id(web)
    assert parent_of(model) == span_id(call)  # through the traceparent in the protocol header
    for name in ("zerolens.model/decode", "zerolens.model/queue", "zerolens.model/batch"):
        assert parent_of(_one(named, name, SpanKind.INTERNAL)) == span_id(model), name
    for span in (web, call, model):
        assert span.attributes["zerolens.request_id"] == "trace-it-1"
    assert call.attributes["zerolens.status"] == model.attributes["zerolens.status"] == "OK"


def test_an_incoming_traceparent_is_honoured_across_the_hop(spans, post, cat_jpeg) -> None:
    # Pixels this time (decode_in_web, the default): a readiness ping first, which stays untraced.
    response = post(cat_jpeg.data, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert response.status_code == 200, response.get_json()
    named = by_name(spans)
    web = _one(named, "POST /api/v1/predict", SpanKind.SERVER)
    model = _one(named, "zerolens.model/classify", SpanKind.SERVER)
    assert f"{parent_of(web):016x}" == PARENT_ID
    assert {f"{span.context.trace_id:032x}" for span in spans.get_finished_spans()} == {TRACE_ID}
    assert model.attributes["zerolens.encoding"] == "rgb8" and "zerolens.model/decode" not in named
    assert "zerolens.model/ping" not in named


# --- the real servers, exporting over OTLP/HTTP -----------------------------------------------------------


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP stub: keeps each export request it is sent, decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.exports: list[tuple[str, ExportTraceServiceRequest]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CollectorHandler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.exports.append((self.path, ExportTraceServiceRequest.FromString(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()


def test_both_servers_export_one_trace_to_an_otlp_collector(collector, tmp_path: Path, cat_jpeg) -> None:
    with model_server(tmp_path, otlp_endpoint=collector.url).start() as model:
        web: Proc = web_server(tmp_path, model.ports["zmq"], otlp_endpoint=collector.url)
        with web.start():
            request = urllib.request.Request(
                f"http://127.0.0.1:{web.ports['http']}/api/v1/predict",
                data=cat_jpeg.data,
                headers={"Content-Type": "image/jpeg", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
    # Both have stopped: each sent what it still held as it exited (gunicorn's worker_exit, the model's main).
    spans: dict[str, set[str]] = {}
    for path, export in collector.exports:
        assert path == "/v1/traces"
        for resource_spans in export.resource_spans:
            (service,) = [
                a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
            ]
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    if span.trace_id.hex() == TRACE_ID:
                        spans.setdefault(service, set()).add(span.name)
    assert spans == {
        "zerolens-web": {"POST /api/v1/predict", "zerolens.model/classify"},
        "zerolens-model": {"zerolens.model/classify", "zerolens.model/queue", "zerolens.model/batch"},
    }
