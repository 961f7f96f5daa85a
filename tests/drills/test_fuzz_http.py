"""B3 (HTTP half): hypothesis fuzzes the HTTP API — multipart bodies, headers, query strings — in process,
and mutated raw requests against a real gunicorn web tier: never a 5xx, never an uncaught exception."""

from __future__ import annotations

import errno
import io
import socket
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import model_server, web_server

pytestmark = pytest.mark.integration

EXAMPLES = 1500
RAW_EXAMPLES = 300
# mostly the two upload routes, where a body is read and parsed
PATHS = (
    ["/api/v1/predict"] * 4 + ["/uploader"] * 2 + ["/", "/healthz", "/readyz", "/metrics", "/api/v1/nothing"]
)

text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=40)
header_names = st.sampled_from(
    ["Content-Type", "Accept", "X-Request-ID", "X-Forwarded-For", "Transfer-Encoding", "Expect", "Range"]
)
content_types = st.one_of(
    st.sampled_from(
        [
            "image/jpeg",
            "image/png",
            "application/octet-stream",
            "multipart/form-data",
            "text/plain",
            "",
            "image/",
        ]
    ),
    st.builds(lambda b: f"multipart/form-data; boundary={b}", text),
    text,
)


@st.composite
def multipart_bodies(draw: st.DrawFn, photo: bytes) -> tuple[bytes, str]:
    """A multipart body, well-formed or not, with parts that may or may not carry a photo."""
    boundary = draw(
        st.sampled_from(["b0undary", "x", "a" * 70, "--"]) | st.text("abc-_", min_size=1, max_size=8)
    )
    parts = []
    for _ in range(draw(st.integers(0, 20))):
        name = draw(st.sampled_from(["image", "top_k", "other", ""]) | text)
        filename = draw(st.none() | text)
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        payload = draw(
            st.sampled_from([photo, photo[: len(photo) // 3], b"", b"5", b"-1", b"\xff\xd8\xff"])
            | st.binary(max_size=64)
        )
        head = f"Content-Disposition: {disposition}\r\n"
        if draw(st.booleans()):
            head += f"Content-Type: {draw(content_types)}\r\n"
        parts.append(f"--{boundary}\r\n{head}\r\n".encode("latin-1") + payload + b"\r\n")
    end = draw(st.sampled_from([f"--{boundary}--\r\n", "", f"--{boundary}", "--"]))
    body = b"".join(parts) + end.encode("latin-1")
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def fuzz_app(photos):
    import services.web as web
    from tests.conftest import FakeModelClient

    model = FakeModelClient()
    model.input = (224, 0.875)  # the web tier decodes, as in production
    app = web.create_app({"TESTING": False, "MODEL_CLIENT": lambda cfg: model, "zmq_security": "plaintext"})
    return app


def test_http_api_fuzz(fuzz_app, photos, drill_record):
    photo = photos["coffee.jpg"].data
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        method=st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "OPTIONS", "HEAD"]),
        path=st.sampled_from(PATHS),
        query=st.dictionaries(st.sampled_from(["top_k", "x", ""]) | text, text, max_size=3),
        headers=st.dictionaries(header_names, text, max_size=4),
        body=st.one_of(
            multipart_bodies(photo),
            st.tuples(st.sampled_from([photo, photo[:100], b""]) | st.binary(max_size=256), content_types),
        ),
    )
    def one(method, path, query, headers, body):
        data, content_type = body
        headers = {**headers, "Content-Type": content_type}
        with fuzz_app.test_client() as client:
            resp = client.open(
                path, method=method, query_string=query, headers=headers, input_stream=io.BytesIO(data)
            )
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (resp.status_code, resp.get_data()[:300])

    try:
        one()
    finally:
        drill_record(
            "B3",
            "Fuzzing the HTTP API in process (multipart, headers, query)",
            examples=sum(seen.values()),
            statuses=", ".join(f"{code}×{n}" for code, n in sorted(seen.items())),
            server_errors=sum(n for code, n in seen.items() if code >= 500),
        )


def _raw(port: int, request: bytes) -> bytes:
    """Send a raw request, half-close, and return what the server answered (b"" when it just closed).

    The server may answer and close before the whole request is sent (a bad request line): then
    sending or half-closing fails, and whatever answer arrived is still read. A half-closed client
    may look gone to the web tier (499): that is a 4xx like any other here.
    """
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:  # reset, broken pipe, or not connected once the peer reset
            if error.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                raise
        try:
            while len(answer) < 64 and (chunk := sock.recv(4096)):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_raw_requests_fuzz_against_gunicorn(tmp_path, photos, spawn, drill_record):
    model = spawn(model_server(tmp_path))
    web = spawn(web_server(tmp_path, model.ports["zmq"], client_header_timeout_s=2, client_body_timeout_s=2))
    port, photo = web.ports["http"], photos["coffee.jpg"].data
    valid = (
        b"POST /api/v1/predict?top_k=3 HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(photo)
        + photo
    )
    head_end = valid.index(b"\r\n\r\n") + 4
    seen: dict[str, int] = {}

    @settings(max_examples=RAW_EXAMPLES, deadline=None, derandomize=True, database=None)
    @given(
        cut=st.integers(0, head_end + 64),
        edits=st.lists(
            st.tuples(st.integers(0, head_end + 32), st.binary(min_size=0, max_size=8)), max_size=4
        ),
        chunked=st.booleans(),
    )
    def one(cut, edits, chunked):
        request = bytearray(valid)
        if chunked:
            request = bytearray(valid.replace(b"Content-Length", b"Transfer-Encoding: chunked\r\nX-Len"))
        for at, insert in edits:  # overwrite or insert bytes in and around the head
            request[at : at + len(insert) // 2] = insert
        answer = _raw(port, bytes(request[: len(request) - cut]) if cut else bytes(request))
        status_line = answer.split(b" ", 2) if answer.startswith(b"HTTP/") else []
        status = status_line[1].decode("latin-1") if len(status_line) > 1 else "closed"
        seen[status] = seen.get(status, 0) + 1
        assert not status.startswith("5"), (status, bytes(request[:200]))

    start = time.monotonic()
    try:
        one()
        still = requests.post(
            f"http://127.0.0.1:{port}/api/v1/predict",
            data=photo,
            headers={"Content-Type": "image/jpeg"},
            timeout=30,
        )
    finally:
        drill_record(
            "B3",
            "Fuzzing raw HTTP requests against gunicorn (mutated heads, chunked, cut short)",
            examples=sum(seen.values()),
            statuses=", ".join(f"{code}×{n}" for code, n in sorted(seen.items())),
            seconds=round(time.monotonic() - start, 1),
        )
    assert still.status_code == 200, still.text  # and the server still serves
