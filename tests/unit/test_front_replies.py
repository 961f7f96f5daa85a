"""The 503 the worker's loop answers itself: the caller's request id, and each API's error format."""

from __future__ import annotations

import json

from services.web.front import busy_reply


def _parse(raw: bytes) -> tuple[str, dict[str, str], object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return status, headers, json.loads(body)


def test_busy_reply_carries_the_callers_request_id_and_retry_after():
    head = b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nX-Request-Id: job-7.a\r\n\r\n"
    status, headers, body = _parse(busy_reply(head, b"/api/v1/predict", 2))
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["X-Request-ID"] == "job-7.a" and headers["Retry-After"] == "2"
    assert body["error"]["status"] == "SERVICE_UNAVAILABLE"


def test_busy_reply_makes_an_id_when_the_callers_is_unsafe():
    head = b"POST /api/v1/predict HTTP/1.1\r\nX-Request-ID: <script>\r\n\r\n"
    _, headers, _ = _parse(busy_reply(head, b"/api/v1/predict", 1))
    assert len(headers["X-Request-ID"]) == 32 and headers["X-Request-ID"].isalnum()


def test_busy_reply_speaks_the_open_inference_protocol_under_v2():
    head = b"POST /v2/models/m/infer HTTP/1.1\r\n\r\n"
    _, _, body = _parse(busy_reply(head, b"/v2/models/m/infer", 1))
    assert body == {"error": "the service is busy; please try again in a moment"}
