"""services/web/multipart.py: forms as real clients encode them, read as werkzeug's own parser reads them."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata
from werkzeug.formparser import MultiPartParser
from werkzeug.test import EnvironBuilder

from services.web import multipart
from services.web.multipart import FormFieldTooLarge, TooManyParts

LIMIT = 1000


def werkzeug_parse(body: bytes, boundary: bytes) -> tuple[dict, dict]:
    form, files = MultiPartParser(max_form_memory_size=None).parse(io.BytesIO(body), boundary, len(body))
    return _plain(form, files)


def _plain(form, files) -> tuple[dict, dict]:
    """Comparable values: fields as lists of strings, files as lists of (filename, content type, bytes)."""
    fields = {k: form.getlist(k) for k in form}
    uploads = {k: [(f.filename, f.content_type, f.read()) for f in files.getlist(k)] for k in files}
    return fields, uploads


def ours(
    body: bytes, boundary: bytes, parts: int | None = None, field: int | None = None
) -> tuple[dict, dict]:
    return _plain(*multipart.parse(body, boundary, parts, field))


def encoded(fields: list) -> tuple[bytes, bytes]:
    body, content_type = encode_multipart_formdata(fields)
    return body, content_type.split("boundary=")[1].encode()


field_names = st.text(st.characters(codec="utf-8", exclude_characters='"\r\n\\'), min_size=1, max_size=12)
file_parts = st.tuples(
    field_names, st.tuples(st.just("photo.jpg"), st.binary(max_size=3000), st.just("image/jpeg"))
)
text_parts = st.tuples(field_names, st.text(max_size=200))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(file_parts, text_parts), min_size=1, max_size=6))
def test_forms_read_as_werkzeug_reads_them(fields: list) -> None:
    body, boundary = encoded(fields)
    assert ours(body, boundary) == werkzeug_parse(body, boundary)


def test_a_photo_and_a_field_as_urllib3_sends_them(cat_jpeg) -> None:
    body, boundary = encoded([("image", ("cat.jpg", cat_jpeg.data, "image/jpeg")), ("top_k", "3")])
    fields, files = ours(body, boundary)
    assert fields == {"top_k": ["3"]}
    assert files == {"image": [("cat.jpg", "image/jpeg", cat_jpeg.data)]}


def test_werkzeugs_test_client_forms_and_an_empty_file_part() -> None:
    photos = [(io.BytesIO(b""), "empty.jpg"), (io.BytesIO(b"\xff\xd8 a photo"), "b.jpg")]
    builder = EnvironBuilder(method="POST", data={"image": photos, "note": "hi"})
    environ = builder.get_environ()
    body = environ["wsgi.input"].read()
    boundary = environ["CONTENT_TYPE"].split("boundary=")[1].strip('"').encode()
    assert ours(body, boundary) == werkzeug_parse(body, boundary)
    assert [data for _, _, data in ours(body, boundary)[1]["image"]] == [b"", b"\xff\xd8 a photo"]


def test_a_preamble_and_an_epilogue_are_ignored() -> None:
    body, boundary = encoded([("a", "1")])
    assert ours(b"a preamble\r\n" + body + b"an epilogue", boundary) == ({"a": ["1"]}, {})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary here at all",
        b'--bnd\r\nContent-Disposition: form-data; name="a"\r\n\r\ncut short',
        b"--bndX garbage where the boundary ends",
    ],
)
def test_a_malformed_body_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        multipart.parse(body, b"bnd", None, None)


def test_more_parts_than_allowed_is_too_many_parts() -> None:
    body, boundary = encoded([(f"f{i}", "x") for i in range(5)])
    assert len(ours(body, boundary, parts=5)[0]) == 5
    with pytest.raises(TooManyParts):
        multipart.parse(body, boundary, 4, None)


def test_a_text_field_or_headers_over_the_limit_is_field_too_large() -> None:
    body, boundary = encoded([("note", "x" * (LIMIT + 1))])
    with pytest.raises(FormFieldTooLarge):
        multipart.parse(body, boundary, None, LIMIT)
    body, boundary = encoded([("n" * (LIMIT + 1), "x")])  # a name that long makes the headers too long
    with pytest.raises(FormFieldTooLarge):
        multipart.parse(body, boundary, None, LIMIT)


def test_a_file_part_is_not_held_to_the_field_limit() -> None:
    photo = b"\xff\xd8" + b"\0" * (10 * LIMIT)
    body, boundary = encoded([("image", ("big.jpg", photo, "image/jpeg"))])
    assert ours(body, boundary, field=LIMIT)[1]["image"][0][2] == photo


def test_a_fields_charset_is_honoured_when_it_is_a_known_one() -> None:
    boundary = b"bnd"
    head = (
        b'--bnd\r\nContent-Disposition: form-data; name="a"\r\nContent-Type: text/plain; charset=%s\r\n\r\n'
    )
    latin = head % b"iso-8859-1" + "café".encode("latin-1") + b"\r\n--bnd--\r\n"
    unknown = head % b"utf-7" + "café".encode() + b"\r\n--bnd--\r\n"
    assert ours(latin, boundary)[0] == {"a": ["café"]}
    assert ours(unknown, boundary)[0] == {"a": ["café"]}  # read as UTF-8, as werkzeug does
