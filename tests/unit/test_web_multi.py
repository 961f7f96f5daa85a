"""Several photos in one request, through the API and the page's form, with a fake model client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import template_rendered
from flask.testing import FlaskClient

from services.protocol import Reply, Status
from services.web.model_client import ModelTimeout
from services.web.tiers import admission

pytestmark = pytest.mark.usefixtures("tiers")  # admission limits start fresh in every test

SIZES = {"chelsea.jpg": (451, 300), "coffee.jpg": (600, 400), "china.jpg": (640, 427)}


def post_files(client: FlaskClient, url: str, *uploads: Any, **kwargs: Any) -> Any:
    """POST every upload in the field `image` of one multipart form, in order."""
    return client.post(url, data={"image": [upload.as_file() for upload in uploads]}, **kwargs)


@pytest.fixture
def rendered(app: Any) -> Iterator[list[dict[str, Any]]]:
    """The context of every template the app renders while the test runs."""
    contexts: list[dict[str, Any]] = []

    def record(sender: Any, template: Any, context: dict[str, Any], **extra: Any) -> None:
        contexts.append(context)

    with template_rendered.connected_to(record, app):
        yield contexts


def test_one_part_keeps_the_single_photo_answer(client: FlaskClient, cat_jpeg) -> None:
    body = post_files(client, "/api/v1/predict", cat_jpeg).get_json()
    assert "results" not in body and body["predictions"][0]["label"] == "tiger cat"


def test_several_parts_reach_the_model_tier_together_and_answer_in_order(make_app, fake_model, photos):
    arrived = threading.Barrier(3, timeout=10)
    classify = fake_model.classify

    def held(*args: Any, **kwargs: Any) -> Reply:
        arrived.wait()  # breaks (and fails the photos) unless all three are being sent at once
        return classify(*args, **kwargs)

    fake_model.classify = held
    app = make_app(decode_in_web=False)
    uploads = [photos[name] for name in SIZES]
    with app.test_client() as client:
        response = post_files(client, "/api/v1/predict?top_k=2", *uploads, headers={"X-Request-ID": "many7"})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert [(r["image"]["width"], r["image"]["height"]) for r in results] == list(SIZES.values())
    assert [r["request_id"] for r in results] == ["many7.0", "many7.1", "many7.2"]
    assert all(len(r["predictions"]) == 2 and r["timings_ms"]["model_server"] == 13.0 for r in results)
    assert {call["image"] for call in fake_model.calls} == {upload.data for upload in uploads}
    assert response.headers["X-Request-ID"] == "many7"
    assert admission(app.config["ZEROLENS"]).in_flight == 0  # every ticket given back


def test_one_bad_photo_among_good_ones_gets_its_own_error(client, fake_model, cat_jpeg, bad_uploads):
    uploads = [cat_jpeg, bad_uploads["text"], bad_uploads["empty"], bad_uploads["bomb_png"], cat_jpeg]
    response = post_files(client, "/api/v1/predict", *uploads)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [list(r) for r in results] == [list(results[0]), ["error"], ["error"], ["error"], list(results[0])]
    assert results[0]["predictions"][0]["label"] == results[4]["predictions"][0]["label"] == "tiger cat"
    errors = [r["error"] for r in results[1:4]]
    assert [(e["code"], e["status"]) for e in errors] == [
        (415, "UNSUPPORTED_MEDIA_TYPE"),
        (400, "BAD_REQUEST"),
        (400, "BAD_REQUEST"),
    ]
    assert errors[0]["message"].startswith("unsupported file type")
    assert errors[1]["message"].startswith("the file 'empty.jpg' is empty: choose a ")
    assert "400,000,000 pixels" in errors[2]["message"]
    assert len(fake_model.calls) == 2  # the bad ones were refused here, before the network


def test_a_model_failure_is_the_failing_photos_own_error(make_app, fake_model, photos) -> None:
    classify = fake_model.classify
    coffee, china = photos["coffee.jpg"].data, photos["china.jpg"].data

    def answer(image: bytes, *args: Any, **kwargs: Any) -> Reply:
        if image == coffee:
            return replace(classify(image, *args, **kwargs), status=Status.BAD_IMAGE, error="cannot decode")
        if image == china:
            raise ModelTimeout("deadline passed")
        return classify(image, *args, **kwargs)

    fake_model.classify = answer
    with make_app(decode_in_web=False).test_client() as client:
        uploads = [photos["chelsea.jpg"], photos["coffee.jpg"], photos["china.jpg"]]
        response = post_files(client, "/api/v1/predict", *uploads)
    assert response.status_code == 200
    first, bad, late = response.get_json()["results"]
    assert first["predictions"][0]["label"] == "tiger cat"
    assert bad["error"] == {"code": 400, "status": "BAD_REQUEST", "message": "cannot decode"}
    assert late["error"]["code"] == 504 and "try again" in late["error"]["message"]


def test_request_errors_stay_the_requests_own(client, fake_model, cat_jpeg) -> None:
    response = post_files(client, "/api/v1/predict?top_k=0", cat_jpeg, cat_jpeg)
    assert response.status_code == 400 and "top_k" in response.get_json()["error"]["message"]
    assert fake_model.calls == []


def test_a_client_that_left_stops_every_photo(client, fake_model, cat_jpeg) -> None:
    server_end, client_end = socket.socketpair()
    client_end.close()
    with server_end:
        response = post_files(
            client, "/api/v1/predict", cat_jpeg, cat_jpeg, environ_base={"gunicorn.socket": server_end}
        )
    assert response.status_code == 499 and fake_model.calls == []


def test_the_page_gets_results_for_several_photos(client, rendered, cat_jpeg, bad_uploads) -> None:
    response = post_files(client, "/uploader", bad_uploads["text"], cat_jpeg, headers={"Accept": "text/html"})
    assert response.status_code == 200 and response.mimetype == "text/html"
    context = rendered[-1]
    text, cat = context["results"]
    assert text["filename"] == "notes.jpg" and text["result"] is None
    assert set(text["error"]) == {"code", "title", "message"} and text["error"]["code"] == 415
    assert text["error"]["title"] == "Unsupported Media Type"
    assert cat["filename"] == "chelsea.jpg" and cat["error"] is None
    assert cat["result"]["predictions"][0]["label"] == "tiger cat"
    # the single-photo variables: the first photo classified
    assert context["result"] == cat["result"] and context["filename"] == "chelsea.jpg"


def test_the_page_gets_results_for_one_photo_too(client, rendered, cat_jpeg) -> None:
    assert post_files(client, "/uploader", cat_jpeg).status_code == 200
    context = rendered[-1]
    assert context["results"] == [{"filename": "chelsea.jpg", "result": context["result"], "error": None}]
    assert context["filename"] == "chelsea.jpg" and set(context["result"]["timings_ms"]) == {
        "total",
        "decode",
        "queue",
        "inference",
        "model_server",
        "roundtrip",
    }


def test_the_page_shows_the_first_error_when_no_photo_was_classified(client, rendered, bad_uploads):
    response = post_files(client, "/uploader", bad_uploads["text"], bad_uploads["empty"])
    assert response.status_code == 200
    context = rendered[-1]
    assert [item["error"]["code"] for item in context["results"]] == [415, 400]
    assert context["error"] == context["results"][0]["error"] and not context.get("result")
