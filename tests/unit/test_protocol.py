"""Round trips and refusals of the wire protocol (services/protocol.py)."""

from __future__ import annotations

import json

import pytest

from services import protocol
from services.protocol import Prediction, ProtocolError, Reply, Request, Status


def request(**kw) -> Request:
    args = {
        "request_id": "abc123",
        "deadline_ms": protocol.deadline_after_ms(5000),
        "top_k": 3,
        "image": b"\xff\xd8",
    }
    return Request(**(args | kw))


def test_request_round_trip_keeps_image_bytes_raw():
    sent = request(image=b"\x00\x01binary\xff" * 100)
    frames = protocol.encode_request(sent)
    assert frames[0] == b"" and frames[1] == protocol.VERSION
    assert frames[3] == sent.image  # its own frame, no base64
    envelope, body = protocol.split_envelope([b"client-id", *frames])
    assert envelope == [b"client-id", b""]
    got = protocol.decode_request(body)
    assert got == sent


def test_ping_has_no_payload():
    frames = protocol.encode_request(request(op=protocol.OP_PING))
    assert len(frames) == 3
    got = protocol.decode_request(frames[1:])
    assert got.op == protocol.OP_PING


def test_reply_round_trip():
    sent = Reply(
        "abc123",
        Status.OK,
        predictions=[Prediction("tabby", 281, 0.8), Prediction("tiger cat", 282, 0.1)],
        timings_ms={"queue": 1.5, "inference": 7.25},
        batch_size=4,
        model="efficientnet_lite0",
    )
    assert protocol.decode_reply(protocol.encode_reply(sent)) == sent


def test_error_reply_round_trip():
    sent = Reply("x", Status.OVERLOADED, "queue full")
    got = protocol.decode_reply(protocol.encode_reply(sent))
    assert got.status is Status.OVERLOADED and got.error == "queue full" and not got.ok


def header(**kw) -> bytes:
    return json.dumps({"v": 1, "id": "r1", "op": "classify", "deadline_ms": 1, "top_k": 5} | kw).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "got 0 frame"),
        ([protocol.VERSION], "got 1 frame"),
        ([b"ZL99", header(), b"img"], "unsupported protocol version 'ZL99'"),
        ([b"\xff\xfe garbage", header(), b"img"], "unsupported protocol version"),
        ([protocol.VERSION, b"{not json", b"img"], "not valid JSON"),
        ([protocol.VERSION, b"[1, 2]", b"img"], "must be a JSON object"),
        ([protocol.VERSION, b" " * 5000, b"img"], "over the 4096-byte limit"),
        ([protocol.VERSION, header(id=""), b"img"], "header.id"),
        ([protocol.VERSION, header(id=7), b"img"], "header.id"),
        ([protocol.VERSION, header(op="explode"), b"img"], "unknown op 'explode'"),
        ([protocol.VERSION, header(deadline_ms="soon"), b"img"], "deadline_ms"),
        ([protocol.VERSION, header(top_k=0), b"img"], "top_k"),
        ([protocol.VERSION, header(top_k=True), b"img"], "top_k"),
        ([protocol.VERSION, header()], "exactly 3 frames"),
        ([protocol.VERSION, header(), b"img", b"extra"], "exactly 3 frames"),
        ([protocol.VERSION, header(op="ping"), b"img"], "no payload"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(body, message):
    with pytest.raises(ProtocolError, match=message) as info:
        protocol.decode_request(body)
    assert info.value.status is Status.BAD_REQUEST


def test_envelope_without_delimiter_is_the_routing_id():
    assert protocol.split_envelope([b"id", b"ZL01"]) == ([b"id"], [b"ZL01"])


def test_peek_request_id_survives_garbage():
    assert protocol.peek_request_id([protocol.VERSION, header(id="zz")]) == "zz"
    assert protocol.peek_request_id([protocol.VERSION, b"\xff"]) == ""
    assert protocol.peek_request_id([]) == ""


@pytest.mark.parametrize(
    "frames",
    [
        [b"", protocol.VERSION],
        [b"x", protocol.VERSION, b"{}"],
        [b"", b"ZL02", b'{"id": "a", "status": "OK"}'],
        [b"", protocol.VERSION, b'{"id": "a", "status": "WHAT"}'],
        [b"", protocol.VERSION, b"nonsense"],
    ],
)
def test_malformed_replies_raise(frames):
    with pytest.raises(ProtocolError):
        protocol.decode_reply(frames)


def test_remaining_time():
    r = request(deadline_ms=10_000)
    assert r.remaining_s(now=9.0) == pytest.approx(1.0)
    assert r.remaining_s(now=11.0) < 0


def test_rgb8_request_round_trip():
    pixels = bytes(range(192))
    sent = request(image=pixels, encoding=protocol.ENCODING_RGB8, shape=(8, 8, 3))
    got = protocol.decode_request(protocol.encode_request(sent)[1:])
    assert got == sent


@pytest.mark.parametrize(
    ("extra", "image", "message"),
    [
        ({"encoding": "webp"}, b"x", "unknown encoding 'webp'"),
        ({"encoding": "rgb8"}, b"x" * 12, "header.shape"),
        ({"encoding": "rgb8", "shape": [2, 2, 4]}, b"x" * 16, "not 2×2×3"),
        ({"encoding": "rgb8", "shape": [2, 2, 3]}, b"x" * 11, "11 bytes, not 2×2×3"),
        ({"encoding": "rgb8", "shape": [2, -2, 3]}, b"x" * 12, "header.shape"),
    ],
)
def test_bad_rgb8_requests_are_refused(extra, image, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_request([protocol.VERSION, header(**extra), image])


def test_ping_reply_carries_the_model_input():
    sent = Reply("p", Status.OK, model="m", input_size=224, crop_fraction=0.875)
    got = protocol.decode_reply(protocol.encode_reply(sent))
    assert (got.input_size, got.crop_fraction) == (224, 0.875)
