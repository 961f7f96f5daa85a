"""Every body limit answers 413 naming the limit that was hit, with or without a Content-Length."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import services.web
from services.web import discard_body

LIMIT = 200_000  # the body limit of these tests
CHUNKED = {"wsgi.input_terminated": True}  # as gunicorn: the server ends a chunked stream itself


@pytest.fixture
def small_client(make_app) -> Iterator:
    """A test client of an app that takes bodies up to LIMIT bytes."""
    with make_app(max_upload_bytes=LIMIT).test_client() as client:
        yield client


def post_chunked(client, url: str, body: bytes, content_type: str, **kwargs):
    """POST `body` as a chunked request: no Content-Length, as gunicorn presents it to the app."""
    headers = {"Transfer-Encoding": "chunked", "Accept": "application/json", **kwargs.pop("headers", {})}
    return client.post(
        url, data=body, content_type=content_type, headers=headers, environ_overrides=CHUNKED, **kwargs
    )


def multipart(fields: list[tuple[str, str | bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type; bytes values are JPEG file parts, str text fields."""
    boundary = "zerolens-test-boundary"
    out = []
    for name, value in fields:
        if isinstance(value, bytes):
            head, data = f'name="{name}"; filename="{name}.jpg"\r\nContent-Type: image/jpeg', value
        else:
            head, data = f'name="{name}"', value.encode()
        out.append(f"--{boundary}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode() + data)
    body = b"\r\n".join(out) + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def message_of(response) -> str:
    body = response.get_json()
    assert body["error"]["code"] == response.status_code == 413
    assert body["error"]["status"] == "REQUEST_ENTITY_TOO_LARGE"
    return body["error"]["message"]


# --- the body: chunked like Content-Length ----------------------------------------------------------------


@pytest.mark.parametrize("padding", [LIMIT, 5 * LIMIT])
def test_chunked_raw_body_over_the_limit_is_413_not_its_first_bytes(
    small_client, fake_model, cat_jpeg, padding: int
) -> None:
    body = cat_jpeg.data + b"\0" * padding  # a valid photo: its first LIMIT bytes alone would decode
    response = post_chunked(small_client, "/api/v1/predict", body, "image/jpeg")
    assert message_of(response) == "the upload is larger than the 195 KB limit"
    assert fake_model.calls == []


def test_chunked_multipart_over_the_limit_is_413(small_client, fake_model, cat_jpeg) -> None:
    padded = cat_jpeg.data + b"\0" * LIMIT
    body, content_type = multipart([("image", padded)])
    for url in ("/api/v1/predict", "/uploader"):
        response = post_chunked(small_client, url, body, content_type)
        assert message_of(response) == "the upload is larger than the 195 KB limit"
    assert fake_model.calls == []


def test_chunked_body_up_to_the_limit_is_classified_whole(small_client, fake_model, cat_jpeg) -> None:
    body = cat_jpeg.data + b"\0" * (LIMIT - len(cat_jpeg.data))  # exactly LIMIT bytes
    response = post_chunked(small_client, "/api/v1/predict", body, "image/jpeg")
    assert response.status_code == 200, response.get_json()
    assert fake_model.calls[0]["image"] == body
    upload, content_type = multipart([("image", cat_jpeg.data)])
    assert post_chunked(small_client, "/api/v1/predict", upload, content_type).status_code == 200
    assert fake_model.calls[1]["image"] == cat_jpeg.data


class _MalformedChunks(io.BytesIO):
    """A server's chunked stream that fails as gunicorn's does on a bad chunk size line."""

    def read(self, size: int | None = -1) -> bytes:
        raise Exception("Invalid chunk size: b'zz'")  # gunicorn's ParseException is a bare Exception


def test_a_malformed_chunked_body_is_400(small_client, fake_model) -> None:
    environ = {**CHUNKED, "wsgi.input": _MalformedChunks()}
    response = small_client.post(
        "/api/v1/predict",
        content_type="image/jpeg",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides=environ,
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "the chunked request body is malformed or was cut short"
    assert fake_model.calls == []


def test_content_length_over_the_limit_is_413_before_reading(small_client, fake_model) -> None:
    stream = io.BytesIO(b"\0" * (LIMIT + 1))
    response = small_client.post(
        "/api/v1/predict", input_stream=stream, content_type="image/jpeg", content_length=LIMIT + 1
    )
    assert message_of(response) == "the upload is larger than the 195 KB limit"
    assert stream.tell() == 0  # refused from the header alone
    assert fake_model.calls == []


# --- the form: parts and fields ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/predict", "/uploader"])
def test_too_many_parts_names_the_parts_limit(client, fake_model, url: str) -> None:
    body, content_type = multipart([(f"f{i}", "x") for i in range(1500)])
    assert len(body) < 200_000  # small: only the number of parts is over a limit
    response = client.post(url, data=body, content_type=content_type, headers={"Accept": "application/json"})
    message = message_of(response)
    assert message.startswith("the form has more than 66 parts") and "larger" not in message
    assert message.endswith("at most 64 photos")  # the parts follow max_images_per_request (64)
    assert fake_model.calls == []


def test_too_many_file_parts_names_the_parts_limit(make_app, cat_jpeg) -> None:
    parts = [(f"image{i}", b"x") for i in range(5)]
    body, content_type = multipart(parts)
    with make_app(max_images_per_request=2).test_client() as client:
        response = client.post("/api/v1/predict", data=body, content_type=content_type)
    assert message_of(response).startswith("the form has more than 4 parts")


def test_more_photos_than_max_images_per_request_is_a_413(make_app, fake_model, cat_jpeg) -> None:
    body, content_type = multipart([("image", cat_jpeg.data)] * 3)  # within the parts limit (2 + 2)
    with make_app(max_images_per_request=2).test_client() as client:
        response = client.post("/api/v1/predict", data=body, content_type=content_type)
    assert response.status_code == 413
    assert message_of(response) == "the form has 3 photos in the field 'image': one request takes at most 2"
    assert fake_model.calls == []


def test_a_form_of_16_parts_is_accepted(client, fake_model, cat_jpeg) -> None:
    fields = [("image", cat_jpeg.data), ("top_k", "2")]
    body, content_type = multipart(fields + [(f"note{i}", "x") for i in range(14)])
    response = client.post("/api/v1/predict", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["predictions"]) == 2


def test_a_form_field_over_the_memory_limit_names_that_limit(client, fake_model, cat_jpeg) -> None:
    fields = [("image", cat_jpeg.data), ("top_k", "1" * 600_000)]
    body, content_type = multipart(fields)
    response = client.post("/api/v1/predict", data=body, content_type=content_type)
    message = message_of(response)
    assert "488 KB limit" in message and "field" in message  # Flask's MAX_FORM_MEMORY_SIZE: 500,000 bytes
    assert fake_model.calls == []


def test_a_big_photo_under_the_body_limit_is_not_a_field_over_the_memory_limit(
    client, fake_model, cat_jpeg
) -> None:
    photo = cat_jpeg.data + b"\0" * 1_500_000  # file parts are not held to MAX_FORM_MEMORY_SIZE
    body, content_type = multipart([("image", photo)])
    response = client.post("/api/v1/predict", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    assert fake_model.calls[0]["image"] == photo


def test_the_page_names_the_limit_too(client) -> None:
    body, content_type = multipart([(f"f{i}", "x") for i in range(100)])
    response = client.post("/uploader", data=body, content_type=content_type, headers={"Accept": "text/html"})
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert "form has more than 66 parts" in response.get_data(as_text=True)


# --- what is left of a refused body is read and dropped, within bounds ------------------------------------


@pytest.fixture
def conn() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a connected socket pair."""
    server, client = socket.socketpair()
    with server, client:
        yield server, client


def environ_of(server: socket.socket, content_length: int | None = None) -> dict:
    environ = {"gunicorn.socket": server, "wsgi.input": server.makefile("rb", buffering=0)}
    if content_length is not None:
        environ["CONTENT_LENGTH"] = str(content_length)
    return environ


def test_discard_body_reads_the_rest_and_restores_the_timeout(conn) -> None:
    server, client = conn

    def send() -> None:  # more than the socket buffers hold: sent while the body is discarded
        client.sendall(b"x" * 3_000_000)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    assert discard_body(environ_of(server)) == 3_000_000
    sender.join()
    assert server.gettimeout() is None  # blocking again, as gunicorn left it


def test_discard_body_gives_up_at_its_deadline(conn, monkeypatch: pytest.MonkeyPatch) -> None:
    server, client = conn
    monkeypatch.setattr(services.web, "DISCARD_MAX_S", 0.2)
    client.sendall(b"x" * 1000)  # then the client stalls
    start = time.monotonic()
    assert discard_body(environ_of(server)) == 1000
    assert 0.15 < time.monotonic() - start < 2
    assert server.gettimeout() is None


def test_discard_body_skips_a_body_too_big_to_drop(conn) -> None:
    server, client = conn
    client.sendall(b"x" * 1000)
    assert discard_body(environ_of(server, content_length=services.web.DISCARD_MAX_BYTES + 1)) == 0
    assert discard_body({"wsgi.input": io.BytesIO(b"x")}) == 0  # not gunicorn: no deadline for the reads


def test_an_error_response_discards_the_body_after_it_is_sent(small_client, monkeypatch) -> None:
    dropped: list[dict] = []
    monkeypatch.setattr(services.web, "discard_body", dropped.append)
    response = small_client.post("/api/v1/predict", data=b"not a photo", content_type="text/plain")
    assert response.status_code == 415 and dropped == []  # not before the response is closed
    response.close()
    assert len(dropped) == 1
    assert small_client.get("/healthz").status_code == 200 and len(dropped) == 1  # only after errors
