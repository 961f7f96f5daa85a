"""The web tier's routes through the Flask test client, with a fake model client injected by the factory."""

from __future__ import annotations

import html
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from services import imaging
from services.config import ConfigError
from services.protocol import Status
from services.web import create_app
from services.web.tiers import admission
from services.web.views import ADMITTED, DOOR, REQUEST_START, parse_request_start


def post_file(client: FlaskClient, url: str, upload: Any, **kwargs: Any) -> Any:
    return client.post(url, data={"image": upload.as_file(), **kwargs.pop("form", {})}, **kwargs)


# --- factory and pages ----------------------------------------------------------------------------------


def test_factory_honours_settings(make_app) -> None:
    assert not create_app().testing
    app = make_app(max_upload_bytes=1234, top_k=3)
    assert app.testing
    assert app.config["MAX_CONTENT_LENGTH"] == 1234
    assert app.config["ZEROLENS"].top_k == 3
    with pytest.raises(ConfigError, match="unknown setting"):
        create_app({"no_such_setting": 1})
    with pytest.raises(ConfigError, match="model_server = 'model-without-port'"):
        create_app({"model_server": "model-without-port"})


def test_upload_page_works_without_javascript(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    # a plain form post lands the browser on the answer (#results), below the form
    assert 'method="post" action="/uploader#results"' in page and 'enctype="multipart/form-data"' in page
    assert '<section id="results"' in page
    # one picker for one or several photos of any image type (the server sniffs and refuses the rest)
    assert 'type="file" name="image" accept="image/*" multiple required' in page
    assert page.count('name="image"') == 1  # the camera's picker has no name: the form never posts it
    assert '<label for="image-input"' in page and 'type="submit"' in page
    assert "/static/app.js" in page and "/static/style.css" in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline


def test_static_assets_are_served(client: FlaskClient) -> None:
    for name in ("app.js", "style.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        response.close()


def test_form_upload_renders_labels_and_timings(
    client: FlaskClient, fake_model, cat_jpeg, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the server's timings as the reply carries them, none on a rounding edge: the page shows them as given
    timings = {"queue": 1.5, "preprocess": 4.0, "inference": 7.3, "total": 13.0}
    answer = fake_model.classify
    monkeypatch.setattr(
        fake_model, "classify", lambda *args, **kwargs: replace(answer(*args, **kwargs), timings_ms=timings)
    )
    response = post_file(client, "/uploader", cat_jpeg)
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert (
        "chelsea.jpg" in page and "tiger cat" in page and "60.0 %" in page and 'style="width: 60.0%"' in page
    )
    # one "Took N ms" (the request's total here), the breakdown under it in a <details>, in the API's order
    timings_block = re.search(r'<details class="timings">(.*?)</details>', page, re.S)
    assert timings_block is not None
    took = re.search(r"<summary>Took (\d+) ms</summary>", timings_block[1])
    lines = re.findall(r"<li>([^<]*)</li>", timings_block[1])
    assert took is not None and len(lines) == 5, timings_block[1]
    assert lines[:4] == [  # decode, queue, inference, model_server: the server's own, as its reply gave them
        "Decoding: 4.0 ms",
        "Waiting in the queue: 1.5 ms",
        "Inference: 7.3 ms",
        "On the model server: 13.0 ms",
    ]
    roundtrip = re.fullmatch(r"Round trip to the model server: (\d+\.\d) ms", lines[4])
    assert roundtrip is not None and float(roundtrip[1]) <= int(took[1]) + 0.5  # the total holds it
    assert "Model fake_net, batch of 3." in timings_block[1]
    # app.js labels the API's timings_ms with the same table: every key but the total, in the API's order
    words = json.loads(html.unescape(re.search(r"data-words='([^']*)'", page)[1]))
    breakdown = ["decode", "queue", "inference", "model_server", "roundtrip"]
    assert [key for key, _ in words["timings"]] == breakdown
    assert [f"{name}: " for _, name in words["timings"]] == [line[: line.index(":") + 2] for line in lines]
    assert "Classify another photo" in page
    assert "data:image" not in page and len(response.data) < 20_000  # the upload is not echoed back
    assert fake_model.calls[0]["image"] == cat_jpeg.data and fake_model.calls[0]["top_k"] == 5


def test_api_answers_json_for_a_multipart_upload(client: FlaskClient, cat_jpeg) -> None:
    response = post_file(client, "/api/v1/predict", cat_jpeg)
    body = response.get_json()
    assert response.status_code == 200
    assert list(body) == ["request_id", "predictions", "model", "batch_size", "image", "timings_ms"]
    assert body["predictions"][0] == {"label": "tiger cat", "index": 281, "probability": 0.6}
    assert len(body["predictions"]) == 5 and body["model"] == "fake_net" and body["batch_size"] == 3
    assert body["image"] == {"format": "JPEG", "width": 451, "height": 300}
    timings = body["timings_ms"]
    assert list(timings) == ["total", "decode", "queue", "inference", "model_server", "roundtrip"]
    # the server's, under the API's names: its preprocess is the decode, its total the model_server
    assert (timings["decode"], timings["queue"], timings["inference"]) == (4.0, 1.5, 7.25)
    assert timings["model_server"] == 13.0
    assert timings["total"] >= timings["roundtrip"] >= 0
    assert response.headers["X-Request-ID"] == body["request_id"]


def test_web_tier_sends_decoded_pixels_when_it_knows_the_model_input(client, fake_model, cat_jpeg, photos):
    fake_model.input = (16, 0.875)
    response = post_file(client, "/api/v1/predict", cat_jpeg)
    assert response.status_code == 200
    call = fake_model.calls[-1]
    assert call["shape"] == (16, 16, 3) and len(call["image"]) == 16 * 16 * 3
    truncated = replace(photos["coffee.jpg"], data=photos["coffee.jpg"].data[:5000])
    response = post_file(client, "/api/v1/predict", truncated)  # only a full decode finds this
    assert response.status_code == 400 and "cannot decode image" in response.get_json()["error"]["message"]
    assert len(fake_model.calls) == 1


def test_pixels_refused_by_another_model_are_resent_as_the_upload(client, fake_model, cat_jpeg) -> None:
    fake_model.input, fake_model.refuse_pixels = (16, 0.875), True
    response = post_file(client, "/api/v1/predict", cat_jpeg)
    assert response.status_code == 200
    assert [call["shape"] for call in fake_model.calls] == [(16, 16, 3), None]
    assert fake_model.calls[1]["image"] == cat_jpeg.data
    assert response.get_json()["timings_ms"]["decode"] == 4.0  # the server's own: it decoded the upload
    assert post_file(client, "/api/v1/predict", cat_jpeg).status_code == 200
    assert [call["shape"] for call in fake_model.calls] == [(16, 16, 3), None, None]  # the size was forgotten


def test_without_decode_in_web_the_upload_goes_as_it_is(make_app, fake_model, cat_jpeg) -> None:
    fake_model.input = (16, 0.875)
    with make_app(decode_in_web=False).test_client() as client:
        response = post_file(client, "/api/v1/predict", cat_jpeg)
    assert response.status_code == 200 and response.get_json()["timings_ms"]["decode"] == 4.0
    assert [(call["shape"], call["image"]) for call in fake_model.calls] == [(None, cat_jpeg.data)]


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/octet-stream"])
def test_api_accepts_a_raw_image_body(client: FlaskClient, fake_model, photos, content_type) -> None:
    upload = photos["chelsea.png"]
    response = client.post("/api/v1/predict?top_k=2", data=upload.data, content_type=content_type)
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 2
    assert fake_model.calls[0]["image"] == upload.data


def test_the_image_limits_of_the_settings_apply(make_app, fake_model, photos) -> None:
    fake_model.input = (224, 0.875)  # the web tier decodes
    with make_app(max_image_side=400).test_client() as client:
        response = post_file(client, "/api/v1/predict", photos["coffee.jpg"])  # 400×600
        assert response.status_code == 400 and "side" in response.get_json()["error"]["message"]
    with make_app(max_decode_bytes=100_000).test_client() as client:
        response = post_file(client, "/api/v1/predict", photos["chelsea.png"])
        assert response.status_code == 400 and "limit per image" in response.get_json()["error"]["message"]
    assert fake_model.calls == []


@pytest.mark.parametrize("name", ["china.jpg", "coffee.jpg"])
def test_real_photos_pass_the_web_checks(client: FlaskClient, photos, name: str) -> None:
    assert post_file(client, "/api/v1/predict", photos[name]).status_code == 200


@pytest.mark.parametrize("name", ["png_alpha", "cmyk_jpeg", "png_16bit", "exif_rotated_jpeg"])
def test_unusual_but_valid_images_are_sent_on(client: FlaskClient, fake_model, bad_uploads, name) -> None:
    assert post_file(client, "/api/v1/predict", bad_uploads[name]).status_code == 200
    assert len(fake_model.calls) == 1


def test_caller_request_id_is_passed_on_when_safe(client: FlaskClient, fake_model, cat_jpeg) -> None:
    post_file(client, "/api/v1/predict", cat_jpeg, headers={"X-Request-ID": "trace-42.a_b"})
    unsafe = post_file(client, "/api/v1/predict", cat_jpeg, headers={"X-Request-ID": "bad id; drop table"})
    made = unsafe.headers["X-Request-ID"]  # a new id instead, passed on and answered the same way
    assert re.fullmatch("[0-9a-f]{32}", made)
    assert [c["request_id"] for c in fake_model.calls] == ["trace-42.a_b", made]


# --- top_k ------------------------------------------------------------------------------------------------


def test_top_k_defaults_to_the_setting(make_app, fake_model, cat_jpeg) -> None:
    with make_app(top_k=3).test_client() as client:
        assert len(post_file(client, "/api/v1/predict", cat_jpeg).get_json()["predictions"]) == 3
    assert fake_model.calls[0]["top_k"] == 3


@pytest.mark.parametrize(
    ("query", "form", "expected"), [("?top_k=7", {}, 7), ("", {"top_k": "2"}, 2), ("", {}, 5)]
)
def test_top_k_from_query_or_form(client: FlaskClient, fake_model, cat_jpeg, query, form, expected):
    response = post_file(client, f"/api/v1/predict{query}", cat_jpeg, form=form)
    assert response.status_code == 200 and fake_model.calls[0]["top_k"] == expected


@pytest.mark.parametrize("value", ["0", "101", "-1", "abc", "2.5"])
def test_bad_top_k_is_a_400(client: FlaskClient, fake_model, cat_jpeg, value: str) -> None:
    response = post_file(client, f"/api/v1/predict?top_k={value}", cat_jpeg)
    assert response.status_code == 400
    assert "top_k must be an integer from 1 to 100" in response.get_json()["error"]["message"]
    assert fake_model.calls == []


def test_pages_carry_security_headers(client: FlaskClient) -> None:
    response = client.get("/")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- refusing work nobody can use -------------------------------------------------------------------------


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_refused_before_any_work(response: Any, fake_model: Any) -> None:
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["status"] == "SERVICE_UNAVAILABLE"
    assert fake_model.calls == [] and fake_model.pings == 0  # no decode, no model server asked


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("t=1700000000.123", 1700000000.123),  # nginx: seconds with milliseconds
        ("t=1700000000123", 1700000000.123),  # New Relic: milliseconds
        ("t=1700000000123456", 1700000000.123456),  # New Relic: microseconds
        ("1700000000123", 1700000000.123),  # without "t="
        ("t=abc", None),
        ("", None),
        ("t=-5", None),
        ("t=nan", None),
    ],
)
def test_x_request_start_formats(value: str, seconds: float | None) -> None:
    parsed = parse_request_start(value)
    assert parsed == (None if seconds is None else pytest.approx(seconds))


def test_request_that_waited_past_its_deadline_is_refused_at_once(
    client, fake_model, cat_jpeg, tiers
) -> None:
    before = counter("zerolens_web_shed_requests_total", reason="waited")
    started = time.monotonic()
    response = post_file(
        client, "/api/v1/predict", cat_jpeg, environ_base={REQUEST_START: time.time() - 11}
    )  # the default deadline is 10 s
    assert time.monotonic() - started < 0.5
    assert_refused_before_any_work(response, fake_model)
    assert counter("zerolens_web_shed_requests_total", reason="waited") == before + 1


@pytest.mark.parametrize("waited_s", [9.5, 30.0])
@pytest.mark.parametrize("fmt", ["t={:.3f}", "t={:.0f}", "{:.0f}"])
def test_proxy_arrival_time_counts_against_the_deadline(client, fake_model, cat_jpeg, tiers, fmt, waited_s):
    arrived = time.time() - waited_s
    scale = 1 if "." in fmt else (1000 if fmt.startswith("t") else 1_000_000)  # s, ms or µs
    header = fmt.format(arrived * scale)
    response = post_file(client, "/api/v1/predict", cat_jpeg, headers={"X-Request-Start": header})
    assert_refused_before_any_work(response, fake_model)


def test_remaining_deadline_goes_to_the_model_and_cannot_be_extended(client, fake_model, cat_jpeg, tiers):
    waited = post_file(
        client, "/api/v1/predict", cat_jpeg, headers={"X-Request-Start": f"t={time.time() - 0.5:.3f}"}
    )
    future = post_file(
        client, "/api/v1/predict", cat_jpeg, headers={"X-Request-Start": f"t={time.time() + 60:.3f}"}
    )
    assert waited.status_code == future.status_code == 200
    assert 9000 <= fake_model.calls[0]["timeout_ms"] <= 9500  # 10 s deadline, 0.5 s gone before
    assert 9000 <= fake_model.calls[1]["timeout_ms"] <= 10_000  # a start in the future counts as now


def test_a_request_that_waited_longer_than_max_queue_wait_is_refused(make_app, fake_model, cat_jpeg):
    with make_app(max_queue_wait_ms=3000).test_client() as client:
        for waited_s, status in ((2.0, 200), (3.5, 503)):
            start = f"t={time.time() - waited_s:.3f}"
            response = post_file(client, "/api/v1/predict", cat_jpeg, headers={"X-Request-Start": start})
            assert response.status_code == status, waited_s
    assert len(fake_model.calls) == 1


def test_saturated_model_tier_sheds_before_decoding(app, client, fake_model, cat_jpeg, tiers) -> None:
    gate = admission(app.config["ZEROLENS"])
    gate.limit = 1.0  # as an OVERLOADED reply would leave it
    held = gate.try_acquire()  # one request of this process is with the model tier
    before = counter("zerolens_web_shed_requests_total", reason="saturated")
    assert_refused_before_any_work(post_file(client, "/api/v1/predict", cat_jpeg), fake_model)
    assert counter("zerolens_web_shed_requests_total", reason="saturated") == before + 1
    held.status = Status.OK
    gate.release(held)
    assert post_file(client, "/api/v1/predict", cat_jpeg).status_code == 200
    assert gate.in_flight == 0 and gate.limit > 1.0  # raised by replies that came while the limit was full


def test_the_loops_door_admits_api_classifications_and_the_view_keeps_its_ticket(
    app, fake_model, cat_jpeg, tiers
):
    door = app.extensions[DOOR]  # what the worker's loop asks before a request waits for a thread
    gate = admission(app.config["ZEROLENS"])
    gate.limit = 1.0
    assert door(b"GET", b"/api/v1/predict") is None and door(b"POST", b"/uploader") is None  # not governed
    ticket = door(b"POST", b"/api/v1/predict")
    assert gate.in_flight == 1 and door(b"POST", b"/api/v1/predict") is False  # full: refused by the loop
    with app.test_client() as client:  # the request the loop admitted: served on its ticket, not refused
        response = post_file(client, "/api/v1/predict", cat_jpeg, environ_base={ADMITTED: ticket})
    assert response.status_code == 200 and len(fake_model.calls) == 1
    assert gate.in_flight == 0 and ticket.closed and gate.limit > 1.0  # given back with the model's answer
    ticket.close()  # the worker closes it again after answering: nothing more happens
    assert gate.in_flight == 0


def test_overloaded_reply_is_a_503_and_lowers_the_admission_limit(app, client, fake_model, cat_jpeg, tiers):
    fake_model.status = Status.OVERLOADED
    response = post_file(client, "/api/v1/predict", cat_jpeg)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    gate = admission(app.config["ZEROLENS"])
    assert gate.limit == 1.0 and gate.in_flight == 0  # one request was in flight: 0.9 of it, at least one
    fake_model.status = Status.BAD_IMAGE
    assert post_file(client, "/uploader", cat_jpeg).status_code == 400  # the ticket is returned on errors
    assert gate.in_flight == 0


@pytest.fixture
def peer() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected socket pair: (the server's end, the client's end)."""
    server_end, client_end = socket.socketpair()
    yield server_end, client_end
    server_end.close()
    client_end.close()


def test_request_of_a_client_that_left_is_dropped_before_decoding(client, fake_model, cat_jpeg, tiers, peer):
    server_end, client_end = peer
    client_end.close()  # the client gave up waiting
    before = counter("zerolens_web_dropped_requests_total", stage="before_decode")
    response = post_file(client, "/api/v1/predict", cat_jpeg, environ_base={"gunicorn.socket": server_end})
    assert response.status_code == 499
    assert fake_model.calls == []
    assert counter("zerolens_web_dropped_requests_total", stage="before_decode") == before + 1


def test_a_client_that_leaves_while_its_photo_is_decoded_is_dropped_before_the_send(
    client, fake_model, cat_jpeg, tiers, peer, monkeypatch
) -> None:
    server_end, client_end = peer
    fake_model.input = (16, 0.875)
    fit = imaging.fit

    def fit_while_the_client_leaves(*args: Any) -> Any:
        client_end.close()
        return fit(*args)

    monkeypatch.setattr(imaging, "fit", fit_while_the_client_leaves)
    before = counter("zerolens_web_dropped_requests_total", stage="before_send")
    response = post_file(client, "/api/v1/predict", cat_jpeg, environ_base={"gunicorn.socket": server_end})
    assert response.status_code == 499 and fake_model.calls == []
    assert counter("zerolens_web_dropped_requests_total", stage="before_send") == before + 1


def test_request_of_a_waiting_client_is_served(client, fake_model, cat_jpeg, tiers, peer) -> None:
    server_end, _ = peer  # the client's end stays open: it waits for the answer
    response = post_file(client, "/api/v1/predict", cat_jpeg, environ_base={"gunicorn.socket": server_end})
    assert response.status_code == 200 and len(fake_model.calls) == 1
