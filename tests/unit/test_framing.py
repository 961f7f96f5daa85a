"""Request framing: when a request read by the worker's event loop is whole and goes to a thread."""

from __future__ import annotations

import pytest

from services.web.framing import (
    COMPLETE,
    DISPATCH,
    INCOMPLETE,
    MAX_CHUNKS,
    UNFRAMED,
    Reading,
    scan,
    wants_continue,
)

MAX_HEAD, MAX_BODY = 8192, 10_000
HEAD = b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"


def feed(*parts: bytes) -> list[str]:
    """The scan result after each part arrives, as the loop sees it."""
    reading, states = Reading(deadline=0.0), []
    for part in parts:
        reading.buf += part
        states.append(scan(reading, MAX_HEAD, MAX_BODY))
    return states


def test_a_request_without_body_is_complete_with_its_head():
    assert feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"\r\n") == [INCOMPLETE, COMPLETE]


def test_a_content_length_body_is_read_to_its_end():
    states = feed(HEAD + b"Content-Length: 10\r\n\r\nabc", b"defg", b"hij")
    assert states == [INCOMPLETE, INCOMPLETE, COMPLETE]
    assert feed(HEAD + b"content-length:10  \r\n\r\n" + b"x" * 10) == [COMPLETE]


def test_a_chunked_body_is_read_to_its_last_chunk_even_when_split_anywhere():
    body = b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    whole = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body
    assert feed(whole) == [COMPLETE]
    for cut in range(len(whole) - len(body), len(whole)):  # every split point inside the body
        assert feed(whole[:cut], whole[cut:]) == [INCOMPLETE, COMPLETE], cut
    assert feed(whole[:-2], b"X-Trailer: 1\r\n\r\n")[-1] == COMPLETE  # trailers end with an empty line


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (HEAD + b"Content-Length: 10001\r\n\r\n", "over the body limit: the app answers 413 unread"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"2711\r\n", "a chunk past the body limit"),
        (HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "both framings: 400"),
        (HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n", "two lengths"),
        (HEAD + b"Content-Length: -3\r\n\r\n", "a length that is not a number"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "a chunk size that is not hex"),
        (b"GET /" + b"a" * MAX_HEAD, "a head over the limit: 414 or 431 from the parser"),
    ],
)
def test_what_gunicorns_parser_must_refuse_goes_to_it_at_once(request_, why):
    assert feed(request_) == [DISPATCH], why


def test_a_body_of_tiny_chunks_goes_to_a_thread_rather_than_cost_the_loop_a_step_each():
    chunks = b"".join(b"1\r\nx\r\n" for _ in range(MAX_CHUNKS + 1))
    assert feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks) == [DISPATCH]


def test_the_payload_of_all_chunks_is_counted_against_the_limit():
    chunks = b"".join(b"64\r\n" + b"x" * 100 + b"\r\n" for _ in range(MAX_BODY // 100))
    assert feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks) == [INCOMPLETE]
    assert feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"1\r\nx\r\n") == [DISPATCH]


@pytest.mark.parametrize("coding", [b"gzip", b"chunked, gzip", b"c\thunked", b""])
def test_a_body_not_chunked_last_cannot_be_framed(coding):
    assert feed(HEAD + b"Transfer-Encoding: " + coding + b"\r\n\r\n") == [UNFRAMED]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nEXPECT:100-Continue\r\nContent-Length: 5\r\n\r\n", True),
        (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", False),  # 1.0: no 1xx
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nX-Expect: 100-continue\r\nContent-Length: 5\r\n\r\n", False),
    ],
)
def test_100_continue_is_answered_once_for_an_http_1_1_head_that_asks(head, expected):
    reading = Reading(deadline=0.0)
    reading.buf += head + b"ab"
    assert scan(reading, 65536, 1 << 20) == INCOMPLETE
    assert wants_continue(reading) is expected
    assert wants_continue(reading) is False  # never twice
