"""One request's id in both tiers' JSON logs: the real model server and the real gunicorn, log_format=json."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import Proc
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, dict[str, object]]:
    """JSON lines on both tiers; the model server's debug level adds its line per reply."""
    return {
        "model": {"max_batch_delay_ms": 10, "log_format": "json", "model_log_level": "debug"},
        "web": {"log_format": "json"},
    }


def _lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of a server's output (native libraries may print plain lines of their own)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_one_request_id_is_in_both_tiers_json_logs(stack: tuple[Proc, Proc], cat_jpeg) -> None:
    model, web = stack
    rid = "it-logs-7f3a"
    request = urllib.request.Request(
        f"http://127.0.0.1:{web.ports['http']}/api/v1/predict",
        data=cat_jpeg.data,
        headers={"Content-Type": "image/jpeg", "X-Request-ID": rid},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.headers["X-Request-ID"] == rid
        assert json.load(response)["request_id"] == rid
    # gunicorn writes the access line once the response is out: wait for it (the model's came before).
    wait_until(lambda: f"rid={rid}" in web.log_path.read_text(), timeout_s=10)

    web_lines = _lines(web.log_path)
    ours = [line for line in web_lines if line.get("request_id") == rid]
    (access,) = [line for line in ours if line["logger"] == "gunicorn.access"]
    assert access["status"] == 200 and access["method"] == "POST"
    assert access["path"] == "/api/v1/predict" and f"rid={rid}" in access["message"]
    assert any(line["logger"] == "gunicorn.error" for line in web_lines)  # gunicorn's own lines too

    model_lines = [line for line in _lines(model.log_path) if line.get("request_id") == rid]
    assert [line["logger"] for line in model_lines] == ["services.model.worker"]
    assert model_lines[0]["level"] == "DEBUG" and "OK after" in model_lines[0]["message"]
    assert all(
        rid not in line for line in model.log_path.read_text().splitlines() if not line.startswith("{")
    )
