"""B3 (protocol half): fuzzing the wire protocol's decoders, then a running model server over ZeroMQ TCP.

The decoders get arbitrary frame lists, mutations of valid requests and replies, and headers built from
hostile JSON (huge integers, NaN, duplicate keys, deep nesting, wrong types). The only exception they may
raise is ProtocolError, and each one becomes a reply the client can decode. Hypothesis is derandomized, so
CI runs the same examples every time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services import config, protocol
from services.config import ModelConfig
from services.model.metrics import ServerMetrics
from services.model.server import ModelServer
from services.protocol import ProtocolError, Reply, Request, Status
from tests.support.runtimes import UniformRuntime

pytestmark = pytest.mark.integration

ROUTING_ID = b"\x00k\x8bEg"  # what a ROUTER prepends: 5 bytes, first one zero
# The decoders get this clock, so the examples are the same bytes, and the outcomes the same, on every run.
NOW_MS = 1_700_000_000_000
# Examples per decoder fuzz; 2,400 in all. Each example costs well under a millisecond.
EXAMPLES = {"frames": 600, "mutations": 800, "headers": 600, "replies": 400}


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same examples on every run: CI stays deterministic
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def valid_messages(now_ms: int) -> list[list[bytes]]:
    """Requests as a DEALER client sends them (delimiter first), one of each kind."""
    deadline = now_ms + 60_000
    messages = [
        protocol.encode_request(Request("r-1", deadline, top_k=3, image=b"\xff\xd8\xff\xe0JFIF")),
        protocol.encode_request(Request("r.2", deadline, image=bytes(12), encoding="rgb8", shape=(2, 2, 3))),
        protocol.encode_request(Request("r_3", deadline, op=protocol.OP_PING)),
    ]
    return [[bytes(f) for f in m] for m in messages]


VALID = valid_messages(NOW_MS)
INTERESTING = [b"", protocol.VERSION, b"ZL02", b"{}", b"[]", b"null", *VALID[0][2:], VALID[1][2], VALID[2][2]]
frame = st.one_of(st.binary(max_size=48), st.sampled_from(INTERESTING))


@st.composite
def mutated(draw: st.DrawFn, base: list[list[bytes]]) -> list[bytes]:
    """A valid message after 1-4 random edits: flip, cut or extend a frame, drop, repeat or insert one."""
    frames = list(draw(st.sampled_from(base)))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "cut", "extend", "drop", "repeat", "insert"]))
        if not frames or edit == "insert":
            frames.insert(draw(st.integers(0, len(frames))), draw(frame))
            continue
        i = draw(st.integers(0, len(frames) - 1))
        data = frames[i]
        if edit == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            frames[i] = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif edit == "cut":
            frames[i] = data[: draw(st.integers(0, len(data)))]
        elif edit == "extend":
            frames[i] = data + draw(st.binary(min_size=1, max_size=16))
        elif edit == "drop":
            del frames[i]
        elif edit == "repeat":
            frames.insert(i, data)
    return frames


# Values a header field may be given: right and wrong types, edges of every range, hostile floats.
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.sampled_from([0, -1, 1, 3, 100, 101, NOW_MS, NOW_MS + protocol.MAX_DEADLINE_AHEAD_MS + 1, 2**63]),
    st.floats(),  # NaN and ±inf included: json.dumps writes them as NaN/Infinity
    st.text(max_size=12),
    st.sampled_from(["classify", "ping", "image", "rgb8", "r1", "a\nb", "x" * 65]),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = ["v", "id", "op", "deadline_ms", "top_k", "encoding", "shape"]


@st.composite
def hostile_header(draw: st.DrawFn, now_ms: int = NOW_MS) -> list[bytes]:
    """A request whose header is written pair by pair, so keys may repeat and values may be anything."""
    pairs = [("id", "h1"), ("deadline_ms", now_ms + 10_000)]
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)))
        value = draw(
            st.one_of(
                json_value,
                st.lists(st.integers(-5, 10**30), min_size=3, max_size=3),  # shapes, mostly wrong
                st.just([2, 2, 3]),
            )
        )
        if draw(st.booleans()):
            pairs = [(k, v) for k, v in pairs if k != key]
        pairs.append((key, value))
    text = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    depth = draw(st.sampled_from([0, 0, 0, 50, 2000]))  # the C parser recurses once per level
    if depth:
        text = text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    raw = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-16"])), "surrogatepass")
    image = draw(st.sampled_from([b"", b"x" * 12, b"\xff\xd8"]))
    return [protocol.DELIMITER, protocol.VERSION, raw, image]


def serve(frames: list[bytes]) -> str:
    """What a worker does with one message, without sockets: 'request' or 'refused' (an error reply).

    Any exception other than ProtocolError escapes and fails the fuzz.
    """
    envelope, body = protocol.split_envelope(frames)
    assert envelope and envelope[0] == ROUTING_ID
    try:
        request = protocol.decode_request(body, now_ms=NOW_MS)
    except ProtocolError as exc:
        assert isinstance(exc.status, Status) and exc.status is not Status.OK
        sent = Reply(protocol.peek_request_id(body), exc.status, str(exc))
        out = protocol.reply_frames(envelope, sent)
        assert out[: len(envelope)] == envelope  # routed back unchanged
        tail = out[len(envelope) - 1 :] if len(envelope[-1]) == 0 else out[len(envelope) :]
        got = protocol.decode_reply(tail)  # what the DEALER client reads
        assert (got.request_id, got.status, got.error) == (sent.request_id, sent.status, sent.error)
        assert got.request_id == "" or protocol.REQUEST_ID.fullmatch(got.request_id)
        return "refused"
    # Accepted: the fields are in range and the request survives a round trip.
    assert protocol.REQUEST_ID.fullmatch(request.request_id)
    assert 0 <= request.deadline_ms <= NOW_MS + protocol.MAX_DEADLINE_AHEAD_MS
    assert -1e12 < request.remaining_s(now=NOW_MS / 1000) < 1e6
    assert 1 <= request.top_k <= protocol.MAX_CLASSES
    assert protocol.decode_request(protocol.encode_request(request)[1:], now_ms=NOW_MS) == request
    return "request"


def fuzz(strategy: st.SearchStrategy, examples: int, check: Callable[[Any], str]) -> dict[str, Any]:
    """Run `check` on `examples` derandomized examples; count outcomes and uncaught exceptions."""
    counts: dict[str, int] = {"examples": 0, "uncaught": 0}

    @fuzz_settings(examples)
    @given(strategy)
    def run(value: Any) -> None:
        counts["examples"] += 1
        try:
            outcome = check(value)
        except ProtocolError:
            outcome = "protocol_error"
        except Exception:
            counts["uncaught"] += 1
            raise
        counts[outcome] = counts.get(outcome, 0) + 1

    try:
        run()
    except Exception as exc:  # recorded, then asserted by the caller
        counts["failure"] = f"{type(exc).__name__}: {exc}"[:200]
    return counts


def test_decoders_raise_only_protocol_errors_and_every_error_is_a_reply(drill_record):
    routed = st.lists(frame, max_size=20).map(lambda fs: [ROUTING_ID, *fs])
    results = {
        "frames": fuzz(routed, EXAMPLES["frames"], serve),
        "mutations": fuzz(mutated(VALID).map(lambda fs: [ROUTING_ID, *fs]), EXAMPLES["mutations"], serve),
        "headers": fuzz(hostile_header().map(lambda fs: [ROUTING_ID, *fs]), EXAMPLES["headers"], serve),
    }
    replies = [[b"", protocol.VERSION, bytes(f)] for f in protocol.encode_reply(Reply("a", Status.OK))[2:]]
    replies.append(protocol.encode_reply(Reply("b", Status.OVERLOADED, "queue full", input_size=224)))

    def read_reply(frames: list[bytes]) -> str:
        protocol.decode_reply(frames)
        return "reply"

    results["replies"] = fuzz(
        st.one_of(st.lists(frame, max_size=6), mutated(replies)), EXAMPLES["replies"], read_reply
    )
    examples = sum(r["examples"] for r in results.values())
    uncaught = sum(r["uncaught"] for r in results.values())
    drill_record(
        "B3",
        "Protocol fuzzing: decoders (derandomized hypothesis)",
        examples=examples,
        uncaught=uncaught,
        accepted=sum(r.get("request", 0) for r in results.values()),
        refused_with_reply=sum(r.get("refused", 0) for r in results.values()),
        bad_replies_refused=results["replies"].get("protocol_error", 0),
    )
    failures = {name: r["failure"] for name, r in results.items() if "failure" in r}
    assert not failures, failures
    assert uncaught == 0
    assert examples >= 2000
    for name in ("mutations", "headers"):  # both outcomes were really exercised
        assert results[name].get("request", 0) > 0 and results[name].get("refused", 0) > 0, results[name]


# --- a running model server ------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ModelServer]:
    # The protocol as an admitted peer speaks it: CurveZMQ, which keeps strangers out, is test_curve.py's.
    settings = {"host": "127.0.0.1", "port": 0, "input_size": 2, "zmq_security": "plaintext"}
    cfg = config.load(ModelConfig, overrides=settings, environ={})
    running = ModelServer(cfg, UniformRuntime(), ServerMetrics()).start()
    try:
        yield running
    finally:
        running.stop(drain_timeout_s=5)


def _dropped(server: ModelServer) -> float:
    return sum(
        s.value for m in server.metrics.dropped.collect() for s in m.samples if s.name.endswith("_total")
    )


SERVER_EXAMPLES = 300


def _fuzzed_messages() -> st.SearchStrategy[list[bytes]]:
    """Arbitrary frames, mutated valid requests and hostile headers, as a DEALER client sends them."""
    # Deadlines from the real clock here, so that valid requests reach the model too.
    now_ms = int(time.time() * 1000)
    return st.one_of(
        st.lists(frame, min_size=1, max_size=20),
        mutated(valid_messages(now_ms)).filter(bool),
        hostile_header(now_ms),
    )


def _send_one(
    client: zmq.Socket, server: ModelServer, frames: list[bytes], counts: dict[str, int], bad: list[str]
) -> None:
    """Send one message and count what became of it within 5 s: a reply, or a drop the server counted.

    Neither, or an INTERNAL reply, goes into `bad`; a reply not routed back to this client fails outright.
    """
    counts["messages"] += 1
    dropped_before = _dropped(server)
    client.send_multipart(frames)
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up:
        if client.poll(20):
            reply = client.recv_multipart()
            counts["replies"] += 1
            # The client's own frames before its first delimiter come back, then the reply.
            prefix = frames[: frames.index(b"")] if b"" in frames else []
            assert reply[:-3] == prefix and reply[-3] == b"", (frames, reply)
            got = protocol.decode_reply(reply[-3:])
            if got.status is Status.INTERNAL:
                bad.append(f"INTERNAL for {frames!r}: {got.error}")
            return
        if _dropped(server) > dropped_before:
            counts["dropped"] += 1
            return
    bad.append(f"neither a reply nor a drop for {frames!r}")


def _ping_and_classify(client: zmq.Socket) -> tuple[Reply | None, Reply | None]:
    """A ping, then a small rgb8 classify: each one's reply, or None if none came within 5 s."""
    ping_request = Request("after-fuzz", protocol.deadline_after_ms(5000), op=protocol.OP_PING)
    client.send_multipart(protocol.encode_request(ping_request))
    ping = protocol.decode_reply(client.recv_multipart()) if client.poll(5000) else None
    rgb8 = Request("after-fuzz-2", protocol.deadline_after_ms(5000), image=bytes(12), encoding="rgb8",
                   shape=(2, 2, 3))  # fmt: skip
    client.send_multipart(protocol.encode_request(rgb8))
    classify = protocol.decode_reply(client.recv_multipart()) if client.poll(5000) else None
    return ping, classify


def test_model_server_answers_or_counts_every_fuzzed_message(server, drill_record):
    counts = {"messages": 0, "replies": 0, "dropped": 0}
    bad: list[str] = []
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as client:
        client.linger = 0
        client.connect(f"tcp://127.0.0.1:{server.port}")

        @fuzz_settings(SERVER_EXAMPLES)
        @given(_fuzzed_messages())
        def run(frames: list[bytes]) -> None:
            _send_one(client, server, frames, counts, bad)

        failure = ""
        try:
            run()
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"[:300]
        alive = server.readiness()
        ping, classify = _ping_and_classify(client)
    drill_record(
        "B3",
        "Protocol fuzzing: a running model server over ZeroMQ TCP",
        messages=counts["messages"],
        replies=counts["replies"],
        dropped_and_counted=counts["dropped"],
        unanswered=len(bad),
        ping_after="OK" if ping and ping.ok else "none",
        classify_after="OK" if classify and classify.ok else "none",
    )
    assert not failure, failure
    assert not bad, bad[:3]
    assert counts["messages"] == SERVER_EXAMPLES
    assert counts["replies"] + counts["dropped"] == counts["messages"]
    assert alive == (True, "fake") and all(w.is_alive() for w in server.workers)  # ready, named its model
    assert ping is not None and ping.ok and ping.request_id == "after-fuzz"
    assert classify is not None and classify.ok and classify.request_id == "after-fuzz-2"
    assert threading.active_count() < 100  # nothing leaked a thread per message
