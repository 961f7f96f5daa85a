"""Bad uploads and model failures become the right HTTP status and a clear message, as JSON or a page."""

from __future__ import annotations

import io

import pytest
from flask.testing import FlaskClient
from markupsafe import escape

from services.protocol import Status
from services.web.model_client import ModelTimeout, ModelUnavailable


def post_file(client: FlaskClient, url: str, upload, **kwargs):
    return client.post(url, data={"image": upload.as_file()}, **kwargs)


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == response.status_code
    return body["error"]


# The page's headline for each status; the code itself is shown small below it ("Error 415").
TITLES = {
    400: "This photo could not be read",
    404: "Page not found",
    415: "This file is not a photo we can read",
    503: "The service is busy",
    504: "The service took too long to answer",
}


def as_shown(message: str) -> str:
    """A message as the page shows it: a sentence with a capital first letter and a full stop, escaped."""
    text = message[:1].upper() + message[1:]
    return str(escape(text if text.endswith((".", "!", "?")) else f"{text}."))


def assert_error_page(response, code: int) -> str:
    """The upload page explaining a failed request: title, code and an alert, and the form to try again."""
    page = response.get_data(as_text=True)
    assert response.status_code == code and response.mimetype == "text/html"
    assert f"<title>{TITLES[code]} · " in page and f">{TITLES[code]}</h1>" in page
    assert f">Error {code}</p>" in page and 'role="alert"' in page
    assert 'action="/uploader#results"' in page  # the form is there to try again
    return page


# --- refused in the web tier, before anything is sent ---------------------------------------------------

BAD_INPUTS = [
    ("empty", 400, "BAD_REQUEST", "is empty"),
    ("text", 415, "UNSUPPORTED_MEDIA_TYPE", "not an image of an accepted type"),
    ("ico", 415, "UNSUPPORTED_MEDIA_TYPE", "an ICO file"),
    ("bomb_png", 400, "BAD_REQUEST", "400,000,000 pixels"),
]


@pytest.mark.parametrize(("name", "code", "status", "message"), BAD_INPUTS)
def test_bad_upload_is_refused_by_the_api(
    client, fake_model, bad_uploads, name, code, status, message
) -> None:
    response = post_file(client, "/api/v1/predict", bad_uploads[name])
    assert response.status_code == code
    error = error_of(response)
    assert error["status"] == status and message in error["message"]
    assert fake_model.calls == []  # refused before the network


@pytest.mark.parametrize(("name", "code", "status", "message"), BAD_INPUTS)
def test_bad_upload_is_explained_on_the_page(
    client, fake_model, bad_uploads, name, code, status, message
) -> None:
    response = post_file(client, "/uploader", bad_uploads[name])
    page = assert_error_page(response, code)
    api_message = error_of(post_file(client, "/api/v1/predict", bad_uploads[name]))["message"]
    assert message in api_message and as_shown(api_message) in page  # the API's words, as a sentence
    assert fake_model.calls == []


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_bad_raw_body_is_sniffed_not_trusted(client, bad_uploads, content_type: str) -> None:
    response = client.post("/api/v1/predict", data=bad_uploads["ico"].data, content_type=content_type)
    assert response.status_code == 415


def test_truncated_jpeg_passes_the_header_check_and_the_server_refuses_it(
    client, fake_model, bad_uploads
) -> None:
    fake_model.status, fake_model.error = Status.BAD_IMAGE, "cannot decode image: image file is truncated"
    response = post_file(client, "/api/v1/predict", bad_uploads["truncated_jpeg"])
    assert response.status_code == 400
    assert error_of(response)["message"] == "cannot decode image: image file is truncated"
    assert len(fake_model.calls) == 1


@pytest.mark.parametrize(
    ("data", "content_type", "code", "message"),
    [
        ({"other": "x"}, "multipart/form-data", 400, "no file in the form field 'image'"),
        ({}, None, 400, "no photo in the request"),
        (
            {"image": "x"},
            "application/x-www-form-urlencoded",
            415,
            "cannot read an application/x-www-form-urlencoded body: send the photo as multipart/form-data in "
            "the field 'image', or as the raw body with its type, e.g. Content-Type: image/jpeg",
        ),
        ("hello", "text/plain", 415, "cannot read a text/plain body"),
        (b"", "image/jpeg", 400, "the request body is empty"),
    ],
)
def test_missing_photo_is_a_clear_error(client, data, content_type, code: int, message: str) -> None:
    response = client.post("/api/v1/predict", data=data, content_type=content_type)
    assert response.status_code == code
    assert message in error_of(response)["message"]


def test_no_file_chosen_in_the_browser_is_a_400(client) -> None:
    response = client.post(
        "/uploader",
        data={"image": (b"", "")},
        content_type="multipart/form-data",
        headers={"Accept": "text/html"},
    )
    page = assert_error_page(response, 400)
    assert '<p id="error-message" class="error-message">No file was chosen, the upload is empty: ' in page


@pytest.mark.parametrize("url", ["/api/v1/predict", "/uploader"])
def test_upload_over_the_limit_is_a_413(make_app, fake_model, cat_jpeg, url: str) -> None:
    with make_app(max_upload_bytes=10_000).test_client() as client:
        response = post_file(client, url, cat_jpeg, headers={"Accept": "application/json"})
        raw = client.post("/api/v1/predict", data=cat_jpeg.data, content_type="image/jpeg")
    assert response.status_code == 413 and raw.status_code == 413
    assert error_of(response)["message"] == "the upload is larger than the 9.77 KB limit"
    assert fake_model.calls == []


# --- model server answers and failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (Status.BAD_IMAGE, 400, "detail"),
        (Status.BAD_REQUEST, 502, "the model server refused the request: detail"),
        (Status.TOO_LARGE, 413, "the image is too large for the model server: detail"),
        (Status.OVERLOADED, 503, "the model servers are busy; please try again in a moment"),
        (Status.DEADLINE_EXCEEDED, 504, "the model server could not answer in time: detail"),
        (Status.INTERNAL, 502, "the model server failed to classify the image"),  # no internals shown
    ],
)
def test_model_status_maps_to_http(make_app, fake_model, cat_jpeg, status, code: int, message: str) -> None:
    fake_model.status, fake_model.error = status, "detail"
    with make_app(retry_after_s=7).test_client() as client:
        response = post_file(client, "/api/v1/predict", cat_jpeg)
    assert response.status_code == code
    assert error_of(response)["message"] == message
    assert response.headers.get("Retry-After") == ("7" if code == 503 else None)


@pytest.mark.parametrize(
    ("exc", "code", "retry_after"),
    [(ModelUnavailable("no answer after 3 tries"), 503, "7"), (ModelTimeout("deadline passed"), 504, None)],
)
def test_client_failures_map_to_http(make_app, fake_model, cat_jpeg, exc, code: int, retry_after) -> None:
    fake_model.raises = exc
    with make_app(retry_after_s=7).test_client() as client:
        api = post_file(client, "/api/v1/predict", cat_jpeg)
        page = post_file(client, "/uploader", cat_jpeg)
    assert api.status_code == page.status_code == code
    assert api.headers.get("Retry-After") == page.headers.get("Retry-After") == retry_after
    message = error_of(api)["message"]
    assert "try again" in message and as_shown(message) in assert_error_page(page, code)


def test_json_clients_get_json_errors_everywhere(client, bad_uploads) -> None:
    response = post_file(client, "/uploader", bad_uploads["ico"], headers={"Accept": "application/json"})
    assert response.status_code == 415 and error_of(response)["status"] == "UNSUPPORTED_MEDIA_TYPE"
    missing = client.get("/no/such/page", headers={"Accept": "application/json"})
    assert missing.status_code == 404 and error_of(missing)["status"] == "NOT_FOUND"


def test_unknown_api_path_and_wrong_method(client) -> None:
    assert error_of(client.get("/api/v1/nope"))["code"] == 404
    response = client.get("/api/v1/predict")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    error = error_of(response)
    assert error["status"] == "METHOD_NOT_ALLOWED"
    assert error["message"] == "GET is not allowed here: POST /api/v1/predict takes a photo"


def test_wrong_method_names_the_methods_the_path_takes(client) -> None:
    probe = client.post("/healthz", headers={"Accept": "application/json"})
    assert probe.status_code == 405
    assert error_of(probe)["message"] == "POST is not allowed here: use GET /healthz"
    infer = client.get("/v2/models/fake_net/infer").get_json()["error"]
    assert infer == "GET is not allowed here: POST /v2/models/fake_net/infer takes a photo"


def test_browser_gets_the_html_page_for_a_404(client) -> None:
    response = client.get("/no/such/page", headers={"Accept": "text/html,*/*;q=0.8"})
    page = assert_error_page(response, 404)
    assert '<a href="/">Back to the upload page</a>' in page


def test_a_photo_that_breaks_off_after_its_signature_is_explained_in_plain_words(client, fake_model) -> None:
    png = b"\x89PNG\r\n\x1a\n"  # the signature, then nothing
    api = client.post("/api/v1/predict", data=png, content_type="image/png")
    assert api.status_code == 400
    message = "cannot read PNG image: the file is truncated or damaged"
    assert error_of(api)["message"] == message
    page = client.post("/uploader", data={"image": (io.BytesIO(png), "cut.png", "image/png")})
    assert "Cannot read PNG image: the file is truncated or damaged." in assert_error_page(page, 400)
    assert "object at" not in page.get_data(as_text=True)  # no Python internals
    assert fake_model.calls == []
