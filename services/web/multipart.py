"""multipart/form-data bodies, parsed from memory with python-multipart.

The body is already in memory (InMemoryRequest), whole and within MAX_CONTENT_LENGTH. python-multipart
finds the boundaries in one pass over it; werkzeug's parser works through 64 KiB buffers with regular
expressions and copies each file part into a spool, which took several times as long for a phone's photo
(figures in docs/performance.md). The result is werkzeug's: a form and files MultiDict of FileStorage.

Limits: more than `max_parts` parts is TooManyParts; a text field's value or a part's headers over
`max_field_bytes` is FormFieldTooLarge (file parts are bounded by the body's limit only). A body
python-multipart refuses is read by werkzeug's parser instead; one that neither reads raises ValueError,
which werkzeug's form parser turns into an empty form.
"""

from __future__ import annotations

import io
from typing import IO, Any

from python_multipart.multipart import MultipartParser, MultipartState
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header

# Text fields are decoded with the charset their part names when it is one of these; else UTF-8 (as werkzeug)
CHARSETS = frozenset({"ascii", "us-ascii", "utf-8", "iso-8859-1"})


class TooManyParts(RequestEntityTooLarge):
    """A multipart form with more parts than MAX_FORM_PARTS."""


class FormFieldTooLarge(RequestEntityTooLarge):
    """A multipart text field, or a part's headers, over MAX_FORM_MEMORY_SIZE."""


class _Form:
    """python-multipart's callbacks, collecting the parts into werkzeug's form and files."""

    def __init__(
        self, body: bytes, delimiter: bytes, max_parts: int | None, max_field_bytes: int | None
    ) -> None:
        self.body, self.delimiter = body, delimiter  # what the parser is given, and "--boundary"
        self.max_parts, self.max_field_bytes = max_parts, max_field_bytes
        self.form: MultiDict[str, str] = MultiDict()
        self.files: MultiDict[str, FileStorage] = MultiDict()
        self.parts = 0
        self._field, self._value = bytearray(), bytearray()  # the header being read
        self._pairs: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_end: int | None = None  # where the part's last header value ends in body
        self._headers = Headers()
        self._options: dict[str, str] = {}  # the part's Content-Disposition parameters
        self._data: list[bytes] = []
        self._size = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._header(self._field, data[start:end]),
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._pairs, self._head_bytes, self._data, self._size, self._head_end = [], 0, [], 0, None

    def _header(self, into: bytearray, data: bytes) -> None:
        into.extend(data)
        self._head_bytes += len(data)
        if self.max_field_bytes is not None and self._head_bytes > self.max_field_bytes:
            raise FormFieldTooLarge()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header(self._value, data[start:end])
        self._head_end = end

    def _header_end(self) -> None:
        self._pairs.append((bytes(self._field), bytes(self._value)))
        self._field.clear()
        self._value.clear()

    def _headers_done(self) -> None:
        self.parts += 1
        if self.max_parts is not None and self.parts > self.max_parts:
            raise TooManyParts()
        if self._head_end is not None and self.body.startswith(self.delimiter, self._head_end + 4):
            # an empty part written without its delimiter's CRLF (werkzeug's own test client does): read as
            # werkzeug reads it, where python-multipart would take the parts after it for its data
            raise ValueError("a delimiter right after a part's headers")
        self._headers = Headers(
            [
                (k.decode("utf-8", "replace").strip(), v.decode("utf-8", "replace").strip())
                for k, v in self._pairs
            ]
        )
        self._options = parse_options_header(self._headers.get("Content-Disposition"))[1]

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])
        self._size += end - start
        is_file = "filename" in self._options  # bounded by the body's limit only
        if not is_file and self.max_field_bytes is not None and self._size > self.max_field_bytes:
            raise FormFieldTooLarge()

    def _end(self) -> None:
        name, data = self._options.get("name", ""), b"".join(self._data)
        if "filename" in self._options:
            file = FileStorage(io.BytesIO(data), self._options["filename"], name, headers=self._headers)
            self.files.add(name, file)
            return
        charset = parse_options_header(self._headers.get("Content-Type"))[1].get("charset", "").lower()
        self.form.add(name, data.decode(charset if charset in CHARSETS else "utf-8", "replace"))


class _WerkzeugParser(MultiPartParser):
    """Werkzeug's parser, for the bodies python-multipart refuses, with the same two 413s (werkzeug itself
    raises one bare RequestEntityTooLarge for both limits). Its parts go to memory, never to disk."""

    def __init__(self, max_parts: int | None, max_field_bytes: int | None) -> None:
        super().__init__(stream_factory=lambda **_: io.BytesIO(), max_form_memory_size=max_field_bytes)
        self.max_parts, self.parts = max_parts, 0

    def parse(self, stream: IO[bytes], boundary: bytes, content_length: int | None) -> tuple[Any, Any]:
        try:
            return super().parse(stream, boundary, content_length)
        except TooManyParts:
            raise
        except RequestEntityTooLarge:
            raise FormFieldTooLarge() from None

    def _count_part(self) -> None:
        self.parts += 1
        if self.max_parts is not None and self.parts > self.max_parts:
            raise TooManyParts()

    def start_file_streaming(self, event: Any, total_content_length: int | None) -> IO[bytes]:
        self._count_part()  # a file part, as it starts
        return super().start_file_streaming(event, total_content_length)

    def get_part_charset(self, headers: Headers) -> str:
        self._count_part()  # a text field, once its value (at most max_form_memory_size) is complete
        return super().get_part_charset(headers)


def parse(
    body: bytes, boundary: bytes, max_parts: int | None, max_field_bytes: int | None
) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
    """The form fields and file parts of a multipart body.

    :raise TooManyParts, FormFieldTooLarge: a limit above (both are 413s).
    :raise ValueError: not a well-formed multipart body (no closing boundary, garbage where one belongs).
    """
    delimiter = b"--" + boundary
    start = 0 if body.startswith(delimiter) else body.find(b"\r\n" + delimiter) + 2  # skip a preamble
    written = body[start:] if start > 0 else body
    form = _Form(written, delimiter, max_parts, max_field_bytes)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        if start == 1:
            raise ValueError("no multipart boundary in the body")
        parser.write(written)
        if parser.state != MultipartState.END:
            raise ValueError("the multipart body ends before its closing boundary")
    except ValueError:
        # Werkzeug reads a few bodies python-multipart refuses: bare LF line ends, an empty part written
        # without its delimiter's CRLF (as werkzeug's own test client writes one). What it cannot read
        # either raises ValueError again.
        return _WerkzeugParser(max_parts, max_field_bytes).parse(io.BytesIO(body), boundary, len(body))
    return form.form, form.files
