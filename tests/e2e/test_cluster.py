"""zerolens on a cluster (scripts/kind-e2e.sh): real photos through the web Service to the model pods."""

from __future__ import annotations

import http.client
import os
import urllib.parse

import pytest
import requests

from tests.conftest import Upload

URL = os.environ.get("ZEROLENS_E2E_URL", "").rstrip("/")

# The one allowed skip: these tests need a cluster, which `make kind-e2e` (GitHub Actions) provides.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not URL, reason="needs a cluster: set ZEROLENS_E2E_URL (make kind-e2e does)"),
]

CATS = {"tabby", "tiger cat", "Egyptian cat"}


def classify(photo: Upload, top_k: int = 3) -> dict:
    response = requests.post(
        f"{URL}/api/v1/predict",
        params={"top_k": top_k},
        files={"image": (photo.filename, photo.data, photo.content_type)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_web_tier_is_ready_behind_the_service() -> None:
    response = requests.get(f"{URL}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def test_coffee_photo_is_espresso(photos: dict[str, Upload]) -> None:
    reply = classify(photos["coffee.jpg"])
    assert reply["predictions"][0]["label"] == "espresso", reply["predictions"]
    assert reply["model"] == "efficientnet_lite0"


def test_chelsea_photo_is_a_cat(photos: dict[str, Upload]) -> None:
    labels = {p["label"] for p in classify(photos["chelsea.jpg"])["predictions"]}
    assert labels & CATS, labels


def test_png_upload_is_classified_too(photos: dict[str, Upload]) -> None:
    reply = classify(photos["chelsea.png"], top_k=5)
    assert len(reply["predictions"]) == 5 and reply["image"]["format"] == "PNG"


def test_oversized_upload_is_refused_before_it_is_sent() -> None:
    # Announce one byte more than the chart's limits.maxUploadBytes (20 MiB) and send only the start: the web
    # tier must answer 413 from the Content-Length alone, in JSON.
    target = urllib.parse.urlsplit(URL)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/predict")
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", str(20 * 1024 * 1024 + 1))
        conn.endheaders(b"\xff\xd8\xff")
        response = conn.getresponse()
        assert response.status == 413
        assert response.getheader("Content-Type", "").startswith("application/json")
    finally:
        conn.close()


def test_web_metrics_count_the_requests() -> None:
    response = requests.get(f"{URL}/metrics", timeout=10)
    assert response.status_code == 200 and "zerolens_web_http_requests" in response.text
