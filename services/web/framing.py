"""When a request read off a socket is whole: the framing of HTTP/1.1 requests, as the web worker's loop
needs it (services/web/front.py).

Framing only decides when to stop reading: gunicorn parses the request again from the same bytes, so a
disagreement can only delay or hasten the hand-over to a thread, never change what the app receives.
"""

from __future__ import annotations

import re

# A body of tiny chunks costs the loop a step per chunk; uploads come in a few big ones. Beyond this many,
# the request goes to a thread as it is (gunicorn reads the rest there).
MAX_CHUNKS = 4096
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_TRANSFER_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_EXPECT_CONTINUE = re.compile(rb"^expect[ \t]*:[ \t]*100-continue[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Reading:
    """What the loop knows about the request it is reading on one connection."""

    __slots__ = (
        "buf", "first_byte_at", "deadline", "head_end", "need", "chunk_pos", "body_bytes", "chunks",
        "continued",
    )  # fmt: skip

    def __init__(self, deadline: float) -> None:
        self.buf = bytearray()
        self.first_byte_at: float | None = None  # time.time(), for the request's own deadline
        self.deadline = deadline  # time.monotonic() by which more must have arrived
        self.head_end: int | None = None  # offset of the body once the head is complete
        self.need: int | None = None  # total bytes of a Content-Length request
        self.chunk_pos = 0  # where the next chunk header starts (chunked bodies)
        self.body_bytes = 0  # chunk payload seen so far
        self.chunks = 0
        self.continued = False  # 100 Continue sent


COMPLETE, INCOMPLETE, DISPATCH, UNFRAMED = "complete", "incomplete", "dispatch", "unframed"


def wants_continue(reading: Reading) -> bool:
    """Whether to answer 100 Continue now: an HTTP/1.1 head that asks for it is complete, its body is not.

    A client that sends `Expect: 100-continue` (curl does for bodies over 1 MB) holds its body back until
    then, or for a second: without the answer every large upload would start a second late, and be refused
    as having waited too long. gunicorn answers it too, but only once the whole body has been read.
    """
    if reading.continued or reading.head_end is None:
        return False
    head = bytes(reading.buf[: reading.head_end])
    line = head[: head.find(b"\r\n")]
    reading.continued = line.endswith(b"HTTP/1.1") and _EXPECT_CONTINUE.search(head) is not None
    return reading.continued


def scan(reading: Reading, max_head: int, max_body: int) -> str:
    """Whether the buffered bytes hold a whole request (COMPLETE), need more (INCOMPLETE), should go to
    gunicorn's parser as they are (DISPATCH: too big or malformed; it answers 413, 414, 431 or 400), or have
    a body whose end cannot be known (UNFRAMED: a transfer coding other than chunked last; answered 400).
    """
    buf = reading.buf
    if reading.head_end is None:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return DISPATCH if len(buf) > max_head else INCOMPLETE
        reading.head_end = end + 4
        head = bytes(buf[: reading.head_end])
        encodings = _TRANSFER_ENCODING.findall(head)
        lengths = _CONTENT_LENGTH.findall(head)
        if encodings:
            codings = [c.strip().lower() for e in encodings for c in e.split(b",")]
            if codings[-1] != b"chunked":
                return UNFRAMED  # RFC 9112 6.1: the length cannot be known; 400 and close
            if lengths:
                return DISPATCH  # refused by the parser (400)
            reading.chunk_pos = reading.head_end
        elif lengths:
            if len(lengths) > 1 or not lengths[0].isdigit():
                return DISPATCH
            length = int(lengths[0])
            if length > max_body:
                return DISPATCH  # the app refuses it (413) without reading it
            reading.need = reading.head_end + length
        else:
            reading.need = reading.head_end  # no body
    if reading.need is not None:
        return COMPLETE if len(buf) >= reading.need else INCOMPLETE
    return _scan_chunks(reading, max_body)


def _scan_chunks(reading: Reading, max_body: int) -> str:
    buf, pos = reading.buf, reading.chunk_pos
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return DISPATCH if len(buf) - pos > 1024 else INCOMPLETE
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return DISPATCH
        if size == 0:  # the last chunk; trailers (usually none) end with an empty line
            if buf.startswith(b"\r\n", line_end + 2) or buf.find(b"\r\n\r\n", line_end) >= 0:
                return COMPLETE
            return DISPATCH if len(buf) - line_end > 8192 else INCOMPLETE
        reading.body_bytes += size
        if reading.body_bytes > max_body or reading.chunks >= MAX_CHUNKS:
            return DISPATCH  # over the limit the app refuses it (413)
        data_end = line_end + 2 + size + 2
        if len(buf) < data_end:
            reading.body_bytes -= size  # counted again once the chunk is complete
            return INCOMPLETE
        pos = reading.chunk_pos = data_end
        reading.chunks += 1
