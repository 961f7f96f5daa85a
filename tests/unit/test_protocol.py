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


NOW_MS = 1_800_000_000_000  # a fixed clock for the deadline's range


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (header(deadline_ms=10**400), "deadline_ms 1000000000000000000000000000000000000"),
        (header(deadline_ms=-1), "deadline_ms -1 is out of range"),
        (header(deadline_ms=NOW_MS + protocol.MAX_DEADLINE_AHEAD_MS + 1), "at most 300 s from now"),
        (header(deadline_ms=1.5e12), "deadline_ms must be an integer"),
        (header(deadline_ms=True), "deadline_ms must be an integer"),
        (header(deadline_ms=None), "deadline_ms must be an integer"),
        (b'{"id": "a", "deadline_ms": NaN}', "NaN is not a JSON number"),
        (b'{"id": "a", "deadline_ms": Infinity}', "Infinity is not a JSON number"),
        (b'{"id": "a", "deadline_ms": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"id": "a", "deadline_ms": 1e999}', "out of range"),
        (b'{"id": "a", "id": "b", "deadline_ms": 1}', "duplicate key"),
        (b'{"id": "a", "deadline_ms": 1, "x": {"k": 1, "k": 2}}', "duplicate key"),
        (b'{"id": "a", "deadline_ms": 1, "x": ' + b"[" * 4000 + b"}", "nests too deep"),
        (b"[" * 4096, "nests too deep"),
        (b'{"id": "\xff", "deadline_ms": 1}', "not UTF-8"),
        ('{"id": "a", "deadline_ms": 1}'.encode("utf-16"), "not UTF-8"),  # json.loads would accept it
        (b'{"id": "a", "deadline_ms": ' + b"9" * 4095 + b"}", "over the 4096-byte limit"),
        (header(id="a\nb"), "header.id"),
        (header(id="x" * 65), "header.id"),
        (header(id="caf\u00e9"), "header.id"),
        (header(id=["r1"]), "header.id"),
        (header(op=["classify"]), r"unknown op \['classify'\]"),
        (header(op="x" * 1000), r"unknown op 'xxxx.*\.\.\.; known"),
        (header(top_k=5.0), "top_k"),
        (header(top_k=10**30), "top_k"),
    ],
)
def test_header_fields_out_of_range_are_bad_requests(raw, message):
    with pytest.raises(ProtocolError, match=message) as info:
        protocol.decode_request([protocol.VERSION, raw, b"img"], now_ms=NOW_MS)
    assert info.value.status is Status.BAD_REQUEST
    assert len(str(info.value)) < 300  # an attacker's bytes are not echoed back at length


def test_deadline_range_allows_the_past_and_the_next_minutes():
    for deadline_ms in (0, 1, NOW_MS - 1, NOW_MS + protocol.MAX_DEADLINE_AHEAD_MS):
        got = protocol.decode_request(
            [protocol.VERSION, header(deadline_ms=deadline_ms), b"i"], now_ms=NOW_MS
        )
        assert got.deadline_ms == deadline_ms
    assert protocol.decode_request([protocol.VERSION, header(deadline_ms=0), b"i"], NOW_MS).remaining_s() < 0


@pytest.mark.parametrize(
    "shape",
    [
        [10**300, 10**300, 3],
        [True, 4, 3],
        [2.0, 2, 3],
        [[2], 2, 3],
        [2, 2, 3, 1],
        {"h": 2},
        [0, 0, 3],
        [protocol.MAX_RGB8_SIDE + 1, 1, 3],
        None,
    ],
)
def test_rgb8_shape_must_be_three_small_positive_ints(shape):
    raw = header(encoding="rgb8", shape=shape) if shape is not None else header(encoding="rgb8")
    with pytest.raises(ProtocolError, match="header.shape"):
        protocol.decode_request([protocol.VERSION, raw, b"x" * 12], now_ms=NOW_MS)


@pytest.mark.parametrize("encoding", [["rgb8"], 1, None, {"a": 1}])
def test_encoding_must_be_a_known_string(encoding):
    with pytest.raises(ProtocolError, match="unknown encoding"):
        protocol.decode_request([protocol.VERSION, header(encoding=encoding), b"x"], now_ms=NOW_MS)


def test_unknown_header_fields_are_ignored():
    got = protocol.decode_request([protocol.VERSION, header(trace={"a": [1, 2.5, None]}), b"i"], NOW_MS)
    assert got.request_id == "r1"


def test_peek_request_id_returns_only_safe_ids():
    assert protocol.peek_request_id([protocol.VERSION, b"[" * 4096]) == ""
    assert protocol.peek_request_id([protocol.VERSION, header(id="a\r\nb")]) == ""
    assert protocol.peek_request_id([protocol.VERSION, b'{"id": "a", "id": "b"}']) == ""
    assert protocol.peek_request_id([protocol.VERSION]) == ""


@pytest.mark.parametrize(
    "reply",
    [
        b"[" * 100_000,
        b'{"id": "a", "status": "OK", "batch_size": 1e400}',
        b'{"id": "a", "status": "OK", "timings_ms": {"q": 1' + b"0" * 400 + b"}}",
        b'{"id": "a", "status": "OK", "input": {"size": Infinity}}',
    ],
)
def test_replies_out_of_range_are_protocol_errors(reply):
    with pytest.raises(ProtocolError, match="malformed reply"):
        protocol.decode_reply([b"", protocol.VERSION, reply])
