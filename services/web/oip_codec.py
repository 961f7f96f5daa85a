"""Open Inference Protocol (KServe v2) infer bodies: the images of a request in, the model's answers out.

Pure functions over bytes and dicts, no Flask. The model has one input, `image`: a BYTES tensor of shape
[N] or [N, 1] whose elements are encoded photos. It travels in plain JSON as base64 strings with
`parameters.content_type: "base64"` (the clients' JSON encoding of BYTES must be UTF-8, which a photo is
not), or with the binary tensor extension: the JSON header first (its length in the
Inference-Header-Content-Length header), then the raw tensor, each element a 4-byte little-endian length
and its bytes. The one output, `probabilities`, is FP32 [N, classes]; asked for with Triton's
classification extension (`parameters.classification: k`) it is BYTES [N, k] of "score:index:label".
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

from services.protocol import MAX_CLASSES, Prediction

INPUT = "image"
OUTPUT = "probabilities"
BYTES = "BYTES"
HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_VERSION = "1"  # one version is served at a time: whatever model the model servers have loaded
EXTENSIONS = ("binary_tensor_data", "classification")
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix in a binary tensor

INPUT_METADATA = {"name": INPUT, "datatype": BYTES, "shape": [-1, 1]}
OUTPUT_METADATA = {"name": OUTPUT, "datatype": "FP32", "shape": [-1, -1]}


class InferError(ValueError):
    """An infer request that does not follow the protocol or this model's metadata (HTTP 400)."""


@dataclass(frozen=True)
class InferRequest:
    """What an infer request asks: its id, its photos, and k for the classification output (0: none)."""

    request_id: str | None
    images: list[bytes]
    classification: int = 0


def parse_infer(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """Read an infer request's body; `header_length`: the Inference-Header-Content-Length header, if any.

    :raise InferError: with a message that says what to send instead.
    """
    view = memoryview(body)
    split = _split_at(header_length, len(body))
    header = _json_object(view[:split])
    binary = view[split:]
    entry = _the_input(header)
    count = _count(entry, max_images)
    parameters = _object(entry.get("parameters", {}), f"input {INPUT!r} parameters")
    if "binary_data_size" in parameters:
        images = _binary_elements(binary, parameters["binary_data_size"], count)
    else:
        if len(binary):
            raise InferError(f"{len(binary)} bytes follow the JSON header; no input has a binary_data_size")
        images = _json_elements(entry, parameters, count)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferError("id must be a string")
    return InferRequest(request_id, images, _classification(header))


def _split_at(header_length: str | None, size: int) -> int:
    """Where the JSON header ends: the whole body without the binary tensor extension."""
    if header_length is None:
        return size
    if not header_length.isdigit() or not 0 < int(header_length) <= size:
        raise InferError(f"{HEADER_LENGTH} must be the JSON header's length, 1 to {size} bytes")
    return int(header_length)


def _json_object(raw: memoryview) -> dict[str, Any]:
    try:
        value = json.loads(bytes(raw))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InferError(f"the request is not valid JSON: {exc}") from None
    return _object(value, "the request")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InferError(f"{what} must be a JSON object")
    return value


def _the_input(header: dict[str, Any]) -> dict[str, Any]:
    """The request's one input, checked against the model's: name, datatype."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InferError(f"inputs must list exactly one input, {INPUT!r} (BYTES, shape [N, 1])")
    entry = _object(inputs[0], "an input")
    if entry.get("name") != INPUT:
        raise InferError(f"unknown input {_shown(entry.get('name'))}: this model's input is {INPUT!r}")
    if entry.get("datatype") != BYTES:
        shown = _shown(entry.get("datatype"))
        raise InferError(f"input {INPUT!r} has datatype BYTES (encoded photos), not {shown}")
    return entry


def _count(entry: dict[str, Any], max_images: int) -> int:
    """The number of photos, from the input's shape [N] or [N, 1]."""
    shape = entry.get("shape")
    valid = (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(type(d) is int for d in shape)
        and shape[1:] in ([], [1])
    )
    if not valid:
        raise InferError(f"input {INPUT!r} must have shape [N] or [N, 1], not {_shown(shape)}")
    if not 1 <= shape[0] <= max_images:
        raise InferError(f"input {INPUT!r} holds {shape[0]} photos; one request takes 1 to {max_images}")
    return shape[0]


def _binary_elements(binary: memoryview, size: object, count: int) -> list[bytes]:
    """The photos of a binary BYTES tensor of `size` bytes: each a 4-byte little-endian length, then bytes."""
    if type(size) is not int or size != len(binary):
        raise InferError(f"binary_data_size is {_shown(size)}; {len(binary)} bytes follow the JSON header")
    images, offset = [], 0
    while offset < size:
        if offset + _LENGTH.size > size:
            raise InferError("the binary tensor ends inside an element's length")
        (length,) = _LENGTH.unpack_from(binary, offset)
        offset += _LENGTH.size
        if offset + length > size:
            raise InferError(f"element {len(images)} claims {length} bytes; the binary tensor ends first")
        images.append(bytes(binary[offset : offset + length]))
        offset += length
    return _counted(images, count)


def _json_elements(entry: dict[str, Any], parameters: dict[str, Any], count: int) -> list[bytes]:
    """The photos of a JSON BYTES tensor: base64 strings, flat or one per row."""
    if parameters.get("content_type") != "base64":
        raise InferError(
            f'send the photos of input {INPUT!r} as base64 strings with parameters.content_type "base64", '
            "or as binary data (the binary tensor extension)"
        )
    data = entry.get("data")
    if not isinstance(data, list):
        raise InferError(f"input {INPUT!r} has no data")
    flat = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in data]
    images = []
    for i, text in enumerate(flat):
        if not isinstance(text, str):
            raise InferError(f"element {i} of input {INPUT!r} must be a base64 string")
        try:
            images.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise InferError(f"element {i} of input {INPUT!r} is not valid base64") from None
    return _counted(images, count)


def _counted(images: list[bytes], count: int) -> list[bytes]:
    if len(images) != count:
        raise InferError(f"input {INPUT!r} has shape [{count}, 1] but holds {len(images)} elements")
    for i, image in enumerate(images):
        if not image:
            raise InferError(f"element {i} of input {INPUT!r} is empty: send the photo's bytes")
    return images


def _classification(header: dict[str, Any]) -> int:
    """k of Triton's classification extension on the one output, 0 when the probabilities are asked."""
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise InferError(f"outputs may list one output, {OUTPUT!r}")
    if not outputs:
        return 0
    entry = _object(outputs[0], "an output")
    if entry.get("name") != OUTPUT:
        raise InferError(f"unknown output {_shown(entry.get('name'))}: this model's output is {OUTPUT!r}")
    k = _object(entry.get("parameters", {}), f"output {OUTPUT!r} parameters").get("classification", 0)
    if type(k) is not int or not 0 <= k <= MAX_CLASSES:
        raise InferError(f"classification must be an integer from 1 to {MAX_CLASSES}")
    return k


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def infer_response(
    model: str, request_id: str, answers: list[list[Prediction]], classification: int
) -> dict[str, Any]:
    """The infer response: the probabilities of every photo, or their k best as "score:index:label"."""
    if classification:
        k = min(classification, *(len(predictions) for predictions in answers))
        data: list[Any] = [f"{p.probability:.6f}:{p.index}:{p.label}" for ps in answers for p in ps[:k]]
        output = {"name": OUTPUT, "datatype": BYTES, "shape": [len(answers), k], "data": data}
    else:
        classes = 1 + max(p.index for predictions in answers for p in predictions)
        data = []
        for predictions in answers:
            row = [0.0] * classes
            for p in predictions:
                row[p.index] = p.probability
            data.extend(row)
        output = {"name": OUTPUT, "datatype": "FP32", "shape": [len(answers), classes], "data": data}
    return {"model_name": model, "model_version": MODEL_VERSION, "id": request_id, "outputs": [output]}
