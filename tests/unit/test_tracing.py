"""Traces: the traceparent in the protocol header, the web tier's server span, the model server's spans, and
nothing of OpenTelemetry loaded while tracing is off."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services import protocol, tracing
from services.config import ModelConfig, load
from services.model.metrics import ServerMetrics
from services.model.pipeline import Pipeline
from services.protocol import ProtocolError, Reply, Request, Status
from tests.support.environ import clean_environ
from tests.support.runtimes import UniformRuntime
from tests.support.spans import by_name, parent_of, recording_spans, span_id

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording_spans() as exporter:
        yield exporter


def _header(frames: list[Any]) -> dict[str, Any]:
    return json.loads(bytes(frames[2]))


# --- the protocol field ---------------------------------------------------------------------------------


def test_traceparent_round_trips_in_the_header() -> None:
    request = Request("rid-1", protocol.deadline_after_ms(1000), image=b"x", traceparent=TRACEPARENT)
    frames = protocol.encode_request(request)
    assert _header(frames)["traceparent"] == TRACEPARENT
    assert protocol.decode_request(frames[1:]).traceparent == TRACEPARENT


def test_a_request_without_one_has_the_header_older_servers_know() -> None:
    request = Request("rid-1", 1_000, image=b"x")
    frames = protocol.encode_request(request)
    assert frames[1] == protocol.VERSION == b"ZL01"
    assert list(_header(frames)) == ["v", "id", "op", "deadline_ms", "top_k"]
    assert protocol.decode_request(frames[1:], now_ms=1_000).traceparent is None


def test_a_ping_may_carry_one() -> None:
    ping = Request("p", 1_000, op=protocol.OP_PING, traceparent=TRACEPARENT)
    assert protocol.decode_request(protocol.encode_request(ping)[1:], now_ms=1_000).traceparent == TRACEPARENT


@pytest.mark.parametrize(
    "value",
    [
        None,  # null is not absent
        42,
        "",
        TRACEPARENT.upper(),
        f"01-{TRACE_ID}-{PARENT_ID}-01",  # another version: its fields are not ours to guess
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero ids are invalid in W3C trace context
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"{TRACEPARENT}-extra",
        TRACEPARENT[:-1],
        f"00_{TRACE_ID}_{PARENT_ID}_01",
    ],
)
def test_a_malformed_traceparent_is_a_bad_request(value: object) -> None:
    header = {"v": 1, "id": "rid-1", "op": "classify", "deadline_ms": 1_000, "traceparent": value}
    with pytest.raises(ProtocolError, match="traceparent") as refused:
        protocol.decode_request([protocol.VERSION, json.dumps(header).encode(), b"x"], now_ms=1_000)
    assert refused.value.status is Status.BAD_REQUEST


# --- the web tier's server span -------------------------------------------------------------------------


def test_web_server_span_is_the_child_of_an_incoming_traceparent(spans, make_app, cat_jpeg) -> None:
    with make_app().test_client() as client:
        response = client.post(
            "/api/v1/predict", data={"image": cat_jpeg.as_file()}, headers={"traceparent": TRACEPARENT}
        )
    assert response.status_code == 200
    (server,) = by_name(spans)["POST /api/v1/predict"]
    assert server.kind is SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == TRACE_ID and f"{parent_of(server):016x}" == PARENT_ID
    assert server.attributes["zerolens.request_id"] == response.headers["X-Request-ID"]
    assert server.attributes["http.route"] == "/api/v1/predict"
    assert server.attributes["http.response.status_code"] == 200


def test_web_tier_starts_a_trace_without_a_valid_traceparent(spans, make_app, cat_jpeg) -> None:
    with make_app().test_client() as client:
        client.post("/api/v1/predict", data={"image": cat_jpeg.as_file()}, headers={"traceparent": "junk"})
        client.post("/api/v1/predict", data={"image": cat_jpeg.as_file()})
    first, second = by_name(spans)["POST /api/v1/predict"]
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_web_errors_are_marked_and_probes_are_not_traced(spans, make_app, fake_model, cat_jpeg) -> None:
    fake_model.status = Status.INTERNAL
    with make_app().test_client() as client:
        assert client.post("/api/v1/predict", data={"image": cat_jpeg.as_file()}).status_code == 502
        for probe in ("/healthz", "/readyz", "/metrics"):
            client.get(probe)
    (server,) = spans.get_finished_spans()
    assert server.status.status_code is StatusCode.ERROR


# --- the model server's spans ---------------------------------------------------------------------------


def _classify(pipeline: Pipeline, request: Request) -> Reply:
    answered: list[Reply] = []
    done = threading.Event()
    pipeline.handle(request, time.monotonic(), lambda reply: (answered.append(reply), done.set()))
    assert done.wait(10)
    return answered[0]


def test_model_spans_hang_under_the_callers_span(spans, cat_jpeg) -> None:
    pipeline = Pipeline(load(ModelConfig, environ={}), UniformRuntime(4), ServerMetrics()).start()
    try:
        request = Request(
            "m-1", protocol.deadline_after_ms(5000), image=cat_jpeg.data, traceparent=TRACEPARENT
        )
        assert _classify(pipeline, request).ok
    finally:
        pipeline.close()
    named = by_name(spans)
    (server,) = named["zerolens.model/classify"]
    assert server.kind is SpanKind.SERVER and f"{parent_of(server):016x}" == PARENT_ID
    assert server.attributes["zerolens.request_id"] == "m-1" and server.attributes["zerolens.status"] == "OK"
    for name in ("zerolens.model/decode", "zerolens.model/queue", "zerolens.model/batch"):
        (child,) = named[name]
        assert parent_of(child) == span_id(server), name
        assert f"{child.context.trace_id:032x}" == TRACE_ID, name
    (batch,) = named["zerolens.model/batch"]
    assert [link.context.span_id for link in batch.links] == [span_id(server)]
    assert batch.attributes["zerolens.batch_size"] == 1
    decode, queue = named["zerolens.model/decode"][0], named["zerolens.model/queue"][0]
    assert server.start_time <= decode.start_time <= decode.end_time <= queue.start_time <= batch.start_time
    assert batch.end_time <= server.end_time


def test_model_pings_are_not_traced(spans) -> None:
    pipeline = Pipeline(load(ModelConfig, environ={}), UniformRuntime(4), ServerMetrics()).start()
    try:
        assert _classify(pipeline, Request("p", protocol.deadline_after_ms(1000), op=protocol.OP_PING)).ok
    finally:
        pipeline.close()
    assert spans.get_finished_spans() == ()


# --- off: nothing loaded --------------------------------------------------------------------------------

# A classification through each tier with tracing off (the default), in a fresh interpreter.
OFF_PROBE = textwrap.dedent(
    """
    import io, json, sys, threading, time
    from PIL import Image
    import numpy as np
    from services import protocol
    from services.config import ModelConfig, load
    from services.model.metrics import ServerMetrics
    from services.model.pipeline import Pipeline
    from services.protocol import Prediction, Reply, Status
    import services.web

    class Client:
        def input_spec(self):
            return None
        def classify(self, image, top_k, request_id=None, shape=None, timeout_ms=None):
            return Reply(request_id, Status.OK, None, [Prediction("cat", 0, 1.0)], batch_size=1, model="m")

    class Runtime:
        name, labels = "fake", ["cat"]
        def predict_batch(self, images):
            return np.ones((len(images), 1), dtype=np.float32)

    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(photo, "JPEG")
    app = services.web.create_app({"TESTING": True, "MODEL_CLIENT": lambda cfg: Client()})
    with app.test_client() as client:
        upload = {"image": (io.BytesIO(photo.getvalue()), "p.jpg")}
        web = client.post("/api/v1/predict", data=upload).status_code
    pipeline = Pipeline(load(ModelConfig), Runtime(), ServerMetrics()).start()
    done = threading.Event()
    request = protocol.Request("off-1", protocol.deadline_after_ms(5000), image=photo.getvalue())
    pipeline.handle(request, time.monotonic(), lambda reply: done.set())
    model = done.wait(10)
    pipeline.close()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print(json.dumps({"web": web, "model": model, "loaded": loaded}))
    """
)


def test_tracing_off_loads_no_opentelemetry() -> None:
    done = subprocess.run(
        [sys.executable, "-c", OFF_PROBE],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"web": 200, "model": True, "loaded": []}


def test_an_empty_endpoint_leaves_tracing_off() -> None:
    tracing.setup("zerolens-test", "")
    assert tracing.tracer() is None


def test_the_endpoint_is_a_collectors_base_url() -> None:
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/v1/traces/") == "http://collector:4318/v1/traces"
