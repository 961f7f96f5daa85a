"""B1: size limits on every HTTP body and head, against a real gunicorn web tier.

Bodies over the cap, with a Content-Length or chunked, raw or multipart, are answered 413 within
BOUND_MS, and a client that sends its whole body before reading (Python's urllib) reads that 413 rather
than a broken pipe. Too many form parts and a big form field are 413s that name their own limit. A long
request line is 414, many or long header fields 431. A chunked body is never held beyond the cap.

Latency: from sending the request's first byte to receiving the status line, the body being sent
meanwhile from another thread as fast as loopback takes it (a browser's upload).
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import Proc, free_port, web_server

pytestmark = [pytest.mark.integration, pytest.mark.drill]

CAP = 2_000_000  # max_upload_bytes of the web tier under test: bodies stay small and quick
BOUND_MS = 100  # the drill's bound on a 413
ROUNDS = 5  # latency samples per kind of body
PIECE = 64 * 1024
# gunicorn.conf.py's limit_request_line, limit_request_fields and limit_request_field_size
LINE_LIMIT, FIELDS_LIMIT, FIELD_SIZE_LIMIT = 4094, 100, 8190


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A gunicorn web tier with a CAP-byte body limit and no model server: every answer here is a refusal,
    decided before a model server would be asked."""
    tmp = tmp_path_factory.mktemp("limits")
    with web_server(tmp, free_port(), zmq_security="plaintext", max_upload_bytes=CAP).start() as proc:
        yield proc


@dataclass
class Answer:
    status: int
    ms: float  # first byte of the request sent → status line received
    body: bytes


def exchange(port: int, head: bytes, body: Iterable[bytes] = ()) -> Answer:
    """Send `head`, then `body` from another thread while this one reads the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        start = time.perf_counter()
        sock.sendall(head)
        sender = threading.Thread(target=_send, args=(sock, body), daemon=True)
        sender.start()
        with sock.makefile("rb") as reader:
            status_line = reader.readline()
            ms = (time.perf_counter() - start) * 1000
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            content = reader.read(int(headers.get("content-length", "0")))
        with contextlib.suppress(OSError):  # the server may have reset the connection after answering
            sock.shutdown(socket.SHUT_RDWR)  # the sender stops, if it has not finished
        sender.join()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    return Answer(int(status_line.split()[1]), ms, content)


def _send(sock: socket.socket, body: Iterable[bytes]) -> None:
    try:
        for piece in body:
            sock.sendall(piece)
    except OSError:
        pass  # the server answered and closed, or the reader shut the socket: the body is not wanted


def padded(prefix: bytes, padding: int, piece: int = PIECE) -> Iterator[bytes]:
    """`prefix`, then `padding` zero bytes, in pieces."""
    yield prefix
    zeros = bytes(piece)
    for offset in range(0, padding, piece):
        yield zeros[: min(piece, padding - offset)]


def chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """`pieces` in HTTP/1.1 chunked framing."""
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def head(path: str, content_type: str, length: int | None = None, extra: bytes = b"") -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"POST %s HTTP/1.1\r\nHost: zerolens\r\nContent-Type: %s\r\nAccept: application/json\r\n%s\r\n%s\r\n"
        % (path.encode(), content_type.encode(), framing, extra)
    )


def multipart_parts(photo: bytes) -> tuple[bytes, bytes, str]:
    """A one-file form: what comes before and after the file's bytes, and its content type."""
    boundary = "zerolens-limits"
    first = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="cat.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + photo
    return first, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def form(fields: list[tuple[str, str]]) -> tuple[bytes, str]:
    boundary = "zerolens-form"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}' for n, v in fields]
    return (
        "\r\n".join(parts) + f"\r\n--{boundary}--\r\n"
    ).encode(), f"multipart/form-data; boundary={boundary}"


def urllib_post(port: int, data: bytes | Iterable[bytes], content_type: str) -> tuple[int | str, str]:
    """POST with urllib, which sends the whole body before it reads: the status and message, or the error."""
    url = f"http://127.0.0.1:{port}/api/v1/predict"
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]["message"]
    except (urllib.error.URLError, OSError) as exc:  # what a server that closes too early causes
        return repr(exc), ""


def worker_pids(web: Proc) -> list[int]:
    assert web.proc is not None
    return [int(pid) for pid in web.rss_mb() if int(pid) != web.proc.pid]


def _memory_kb(pid: int) -> tuple[int, int]:
    """(peak, current) resident memory of a process, in kB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]), int(status["VmRSS"].split()[0])


def reset_peak_rss(pids: list[int]) -> dict[int, int]:
    """Reset each process's peak RSS to its current RSS (Linux: clear_refs 5); the RSS of each, in kB."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return {pid: _memory_kb(pid)[1] for pid in pids}


def peak_growth_mb(before: dict[int, int]) -> float:
    """The most any process's peak RSS rose above its RSS at reset_peak_rss."""
    return max((_memory_kb(pid)[0] - rss) / 1024 for pid, rss in before.items())


def test_bodies_over_the_cap_get_413_fast_and_readable(web, cat_jpeg, drill_record):
    port, photo = web.ports["http"], cat_jpeg.data
    over = 30_000_000  # padding: 15 × the cap
    first, tail, form_type = multipart_parts(photo)
    cases = {
        "content_length": lambda: exchange(
            port, head("/api/v1/predict", "image/jpeg", len(photo) + over), padded(photo, over)
        ),
        "chunked": lambda: exchange(
            port, head("/api/v1/predict", "image/jpeg"), chunked(padded(photo, over))
        ),
        "multipart_content_length": lambda: exchange(
            port,
            head("/uploader", form_type, len(first) + over + len(tail)),
            [*padded(first, over), tail],
        ),
        "multipart_chunked": lambda: exchange(
            port, head("/api/v1/predict", form_type), chunked([*padded(first, over), tail])
        ),
    }
    before = reset_peak_rss(worker_pids(web))  # first, so that no earlier request's buffers are resident
    huge = exchange(port, head("/api/v1/predict", "image/jpeg"), chunked(padded(photo, 100_000_000)))
    growth_mb = peak_growth_mb(before)
    answers = {name: [case() for _ in range(ROUNDS)] for name, case in cases.items()}

    start = time.perf_counter()
    urllib_length = urllib_post(port, photo + bytes(40_000_000), "image/jpeg")
    urllib_ms = (time.perf_counter() - start) * 1000  # the whole body is sent before the answer is read
    urllib_chunked = urllib_post(port, padded(photo, 40_000_000), "image/jpeg")

    median = {name: statistics.median(a.ms for a in runs) for name, runs in answers.items()}
    drill_record(
        "B1",
        "HTTP limits: bodies over the cap (2 MB here) with Content-Length or chunked, raw or multipart, "
        "30 MB and 100 MB of padding after a valid JPEG",
        content_length_413_ms=median["content_length"],
        chunked_413_ms=median["chunked"],
        multipart_content_length_413_ms=median["multipart_content_length"],
        multipart_chunked_413_ms=median["multipart_chunked"],
        slowest_413_ms=max(a.ms for runs in answers.values() for a in runs),
        chunked_100mb_413_ms=huge.ms,
        chunked_100mb_worker_peak_mb=round(growth_mb, 1),
        urllib_40mb=str(urllib_length[0]),
        urllib_40mb_ms=urllib_ms,
        urllib_40mb_chunked=str(urllib_chunked[0]),
    )
    for name, runs in answers.items():
        assert [a.status for a in runs] == [413] * ROUNDS, name
        assert all(b"larger than the 1.91 MB limit" in a.body for a in runs), (name, runs[0].body)
        assert median[name] < BOUND_MS, (name, [a.ms for a in runs])
        assert max(a.ms for a in runs) < 10 * BOUND_MS, (name, [a.ms for a in runs])  # a noisy machine
    assert huge.status == 413 and huge.ms < 10 * BOUND_MS
    # a few transient copies of at most the cap (the loop's buffer, the parser's), far below the 100 MB sent
    assert growth_mb < 10 * CAP / 1e6, "a chunked body was held beyond the cap"
    assert urllib_length == (413, "the upload is larger than the 1.91 MB limit")
    assert urllib_chunked == (413, "the upload is larger than the 1.91 MB limit")


def test_form_limits_name_themselves(web, drill_record):
    port = web.ports["http"]
    parts, parts_type = form([(f"f{i}", "x") for i in range(1500)])
    field, field_type = form([("top_k", "1" * 600_000)])
    too_many = urllib_post(port, parts, parts_type)
    too_big = urllib_post(port, field, field_type)
    drill_record(
        "B1",
        "HTTP limits: a form of 1,500 parts, a form field of 600 kB",
        parts_body_kb=round(len(parts) / 1000),
        parts_status=str(too_many[0]),
        field_status=str(too_big[0]),
    )
    assert too_many[0] == 413 and too_many[1].startswith("the form has more than 66 parts"), too_many
    assert too_big[0] == 413 and "a form field" in too_big[1] and "488 KB limit" in too_big[1], too_big


def test_long_request_line_is_414_and_many_or_long_headers_431(web, drill_record):
    port = web.ports["http"]

    def get(target: str, fields: list[str] = ()) -> Answer:
        lines = [f"GET {target} HTTP/1.1", "Host: zerolens", *fields]
        return exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())

    line_cut = LINE_LIMIT - len("GET  HTTP/1.1")  # the longest target gunicorn takes
    field_cut = FIELD_SIZE_LIMIT - len("X-Pad: \r\n")  # gunicorn counts a field's line with its CRLF
    answers = {
        "line_at_limit": get("/healthz?" + "a" * (line_cut - len("/healthz?"))),
        "line_over": get("/healthz?" + "a" * (line_cut - len("/healthz?") + 1)),
        "fields_at_limit": get("/healthz", [f"X-Pad-{i}: x" for i in range(FIELDS_LIMIT - 1)]),
        "fields_over": get("/healthz", [f"X-Pad-{i}: x" for i in range(FIELDS_LIMIT)]),
        "field_at_limit": get("/healthz", ["X-Pad: " + "a" * field_cut]),
        "field_over": get("/healthz", ["X-Pad: " + "a" * (field_cut + 1)]),
        "field_huge": get("/healthz", ["X-Pad: " + "a" * 1_000_000]),
    }
    drill_record(
        "B1",
        "HTTP limits: request line over 4094 bytes, over 100 header fields, a field over 8190 bytes",
        **{f"{name}_status": a.status for name, a in answers.items()},
        slowest_refusal_ms=max(a.ms for a in answers.values()),
    )
    statuses = {name: a.status for name, a in answers.items()}
    assert statuses == {
        "line_at_limit": 200,
        "line_over": 414,
        "fields_at_limit": 200,
        "fields_over": 431,
        "field_at_limit": 200,
        "field_over": 431,
        "field_huge": 431,
    }
    assert max(a.ms for a in answers.values()) < 10 * BOUND_MS


def test_a_photo_is_classified_whole_with_or_without_chunking(stack, cat_jpeg, drill_record):
    """With a model server and the default cap: bodies under it are read whole and classified."""
    _, web = stack
    port, photo = web.ports["http"], cat_jpeg.data
    plain = urllib_post(port, photo, "image/jpeg")
    pieces = exchange(port, head("/api/v1/predict", "image/jpeg"), chunked(padded(photo, 0)))
    drill_record(
        "B1",
        "HTTP limits: a photo under the default cap, with Content-Length or chunked, with a model server",
        photo_status=plain[0],
        chunked_photo_status=pieces.status,
    )
    assert plain[0] == 200 and json.loads(plain[1])["predictions"], plain
    assert pieces.status == 200 and json.loads(pieces.body)["predictions"], pieces.body


def test_chunked_bodies_are_refused_in_linear_time(web, stack, cat_jpeg, drill_record):
    """30 MB in 64 KiB chunks at the default 20 MiB cap; 3 MB in 1 KiB chunks at the 2 MB cap."""
    photo = cat_jpeg.data
    big = exchange(
        stack[1].ports["http"], head("/api/v1/predict", "image/jpeg"), chunked(padded(photo, 30_000_000))
    )
    small_chunks = exchange(
        web.ports["http"], head("/api/v1/predict", "image/jpeg"), chunked(padded(photo, 3_000_000, 1024))
    )
    linear = big.ms < 10 * BOUND_MS and small_chunks.ms < 10 * BOUND_MS  # 20 MB must arrive first
    drill_record(
        "B1",
        "HTTP limits: chunked bodies over the cap, 30 MB at the default 20 MiB cap and 3 MB in 1 KiB chunks",
        chunked_30mb_413_ms=big.ms,
        chunked_1kib_pieces_413_ms=small_chunks.ms,
        within_1_s="yes" if linear else "no",
    )
    assert big.status == 413 and b"larger than the 20 MB limit" in big.body
    assert small_chunks.status == 413
    assert linear
