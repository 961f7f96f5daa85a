"""Open Inference Protocol bodies: every way an infer request can be written, and wrong."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from services.protocol import Prediction
from services.web.oip_codec import InferError, infer_response, parse_infer


def _json_request(*images: bytes, shape: list[int] | None = None, **extra) -> bytes:
    entry = {
        "name": "image",
        "datatype": "BYTES",
        "shape": shape or [len(images), 1],
        "parameters": {"content_type": "base64"},
        "data": [base64.b64encode(image).decode() for image in images],
    }
    return json.dumps({"inputs": [entry], **extra}).encode()


def _binary_request(*images: bytes, size: int | None = None, **extra) -> tuple[bytes, str]:
    tensor = b"".join(struct.pack("<I", len(image)) + image for image in images)
    entry = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images), 1],
        "parameters": {"binary_data_size": len(tensor) if size is None else size},
    }
    header = json.dumps({"inputs": [entry], **extra}).encode()
    return header + tensor, str(len(header))


def test_base64_photos_in_plain_json():
    asked = parse_infer(_json_request(b"one", b"two", id="r1"), None, 8)
    assert asked.images == [b"one", b"two"]
    assert asked.request_id == "r1"
    assert asked.classification == 0


def test_rows_of_one_element_are_read_as_photos():
    body = json.loads(_json_request(b"one", b"two"))
    body["inputs"][0]["data"] = [[text] for text in body["inputs"][0]["data"]]
    assert parse_infer(json.dumps(body).encode(), None, 8).images == [b"one", b"two"]


def test_binary_tensor_with_length_prefixed_elements():
    body, length = _binary_request(b"\xff\xd8photo", b"", b"x" * 300)
    with pytest.raises(InferError, match="element 1 of input 'image' is empty"):
        parse_infer(body, length, 8)
    body, length = _binary_request(b"\xff\xd8photo", b"x" * 300)
    assert parse_infer(body, length, 8).images == [b"\xff\xd8photo", b"x" * 300]


def test_classification_asks_for_the_k_best():
    outputs = [{"name": "probabilities", "parameters": {"classification": 3, "binary_data": True}}]
    assert parse_infer(_json_request(b"one", outputs=outputs), None, 8).classification == 3


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "exactly one input"),
        (_json_request(b"a").replace(b'"image"', b'"pixels"'), None, "unknown input 'pixels'"),
        (_json_request(b"a").replace(b'"BYTES"', b'"FP32"'), None, "not 'FP32'"),
        (_json_request(b"a", shape=[1, 3]), None, "shape \\[N\\] or \\[N, 1\\]"),
        (_json_request(b"a", shape=[0]), None, "holds 0 photos; one request takes 1 to 8"),
        (_json_request(*[b"a"] * 9), None, "holds 9 photos"),
        (_json_request(b"a", b"b", shape=[3, 1]), None, "shape \\[3, 1\\] but holds 2 elements"),
        (_json_request(b"a").replace(b'"base64"', b'"str"'), None, 'content_type "base64"'),
        (_json_request(b"a").replace(b'"YQ=="', b'"not base64!"'), None, "not valid base64"),
        (_json_request(b"a", id=7), None, "id must be a string"),
        (_json_request(b"a", outputs=[{"name": "logits"}]), None, "unknown output 'logits'"),
        (
            _json_request(b"a", outputs=[{"name": "probabilities", "parameters": {"classification": -1}}]),
            None,
            "classification must be",
        ),
        (_json_request(b"a") + b"trailing", str(len(_json_request(b"a"))), "no input has a binary_data_size"),
        (_json_request(b"a"), "0", "Inference-Header-Content-Length"),
        (_json_request(b"a"), "99999", "Inference-Header-Content-Length"),
        (_json_request(b"a"), "12abc", "Inference-Header-Content-Length"),
        (*_binary_request(b"photo", size=3), "binary_data_size is 3; 9 bytes follow"),
    ],
)
def test_malformed_requests_say_what_to_send(body, length, message):
    with pytest.raises(InferError, match=message):
        parse_infer(body, length, 8)


def test_a_length_past_the_end_of_the_tensor_is_refused():
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}
            ]
        }
    ).encode()
    with pytest.raises(InferError, match="claims 1000 bytes"):
        parse_infer(header + struct.pack("<I", 1000) + b"ab", str(len(header)), 8)
    with pytest.raises(InferError, match="ends inside an element's length"):
        parse_infer(header + b"\x01\x00\x00\x00a\x00", str(len(header)), 8)


def test_response_carries_dense_probabilities_or_classification_strings():
    answers = [
        [Prediction("b", 1, 0.75), Prediction("a", 0, 0.25)],
        [Prediction("c", 2, 0.5), Prediction("a", 0, 0.5)],
    ]
    dense = infer_response("net", "r1", answers, 0)
    assert dense["outputs"][0] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 3],
        "data": [0.25, 0.75, 0.0, 0.5, 0.0, 0.5],
    }
    assert (dense["model_name"], dense["model_version"], dense["id"]) == ("net", "1", "r1")
    classes = infer_response("net", "r1", answers, 1)["outputs"][0]
    assert classes["datatype"] == "BYTES"
    assert classes["shape"] == [2, 1]
    assert classes["data"] == ["0.750000:1:b", "0.500000:2:c"]
