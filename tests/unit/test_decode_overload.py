"""A full decode budget is overload, not a bad photo: 503 + Retry-After on the web tier, OVERLOADED on the
model server."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import pytest

from services import decode_budget, protocol
from services.config import ModelConfig, load
from services.model.metrics import ServerMetrics
from services.model.pipeline import Pipeline
from services.protocol import Reply, Request, Status
from tests.support.runtimes import UniformRuntime

pytestmark = pytest.mark.usefixtures("tiers")  # admission limits start fresh in every test


@pytest.fixture
def full_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's decode budget held whole by another decode, and no wait for room."""
    monkeypatch.setattr(decode_budget, "DECODE_WAIT_S", 0.0)
    decode_budget.configure(256 << 20)
    with decode_budget.hold((256 << 20) - 1024):  # 1 KiB left: too little for any photo
        yield
    decode_budget.configure(None)


def test_the_web_tier_answers_a_full_decode_budget_503(client, fake_model, cat_jpeg, full_budget) -> None:
    fake_model.input = (16, 0.875)  # the web tier decodes
    response = client.post("/api/v1/predict", data={"image": cat_jpeg.as_file()})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    error = response.get_json()["error"]
    assert error["status"] == "SERVICE_UNAVAILABLE" and "busy decoding other photos" in error["message"]
    assert fake_model.calls == []  # nothing was sent


def test_under_v2_the_503_is_an_oip_error(client, fake_model, cat_jpeg, full_budget) -> None:
    fake_model.input = (16, 0.875)
    image = {"name": "image", "datatype": "BYTES", "shape": [1, 1], "parameters": {"content_type": "base64"}}
    body = {"inputs": [{**image, "data": [base64.b64encode(cat_jpeg.data).decode()]}]}
    response = client.post("/v2/models/fake_net/infer", json=body)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "busy decoding other photos" in response.get_json()["error"]


def test_the_model_server_answers_a_full_decode_budget_overloaded(cat_jpeg, full_budget) -> None:
    metrics = ServerMetrics()
    pipeline = Pipeline(load(ModelConfig, environ={}), UniformRuntime(4), metrics).start()
    answered: list[Reply] = []
    done = threading.Event()
    try:
        request = Request("m-1", protocol.deadline_after_ms(5000), image=cat_jpeg.data)
        pipeline.handle(request, time.monotonic(), lambda reply: (answered.append(reply), done.set()))
        assert done.wait(10)
    finally:
        pipeline.close()
    (reply,) = answered
    assert reply.status is Status.OVERLOADED and "no room for another decode" in (reply.error or "")
    refused = {"reason": "decode_busy"}
    assert metrics.registry.get_sample_value("zerolens_model_refused_requests_total", refused) == 1
    assert pipeline.in_flight == 0
