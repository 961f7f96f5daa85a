"""The wire protocol between the web tier and the model server (see docs/protocol.md).

Every message is a multipart ZeroMQ message. After the routing envelope (which a ROUTER adds and a
DEALER client never sees) come:

    request:  b""  |  VERSION  |  header (JSON)  |  image (raw, never base64; absent for "ping")
    reply:    b""  |  VERSION  |  reply (JSON)

The empty delimiter frame keeps REQ clients working too. The version frame is checked before any JSON is
parsed, so a future version can change everything after it. This module is stdlib-only: both tiers import it.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

VERSION = b"ZL01"  # bump on any incompatible change of the frames after it
DELIMITER = b""

OP_CLASSIFY = "classify"
OP_PING = "ping"  # readiness probe from the web tier: no payload, answers OK with the model name
OPS = (OP_CLASSIFY, OP_PING)

# The image frame holds either the uploaded file (imaging.FORMATS; the server decodes it) or pixels the client
# already decoded, centre-cropped and resized to the model's input: height × width × 3 uint8, row-major RGB.
ENCODING_IMAGE = "image"
ENCODING_RGB8 = "rgb8"
ENCODINGS = (ENCODING_IMAGE, ENCODING_RGB8)

MAX_HEADER_BYTES = 4096  # a header is ~150 bytes; anything bigger is garbage or an attack
MAX_TOP_K = 100  # the most predictions the web API lists
# The most predictions a reply lists: a whole ImageNet label set, for the Open Inference Protocol's
# probabilities output, which carries every class's probability.
MAX_CLASSES = 1000
# A deadline further ahead than this is a client bug or garbage (the web tier's is 10 s); it also keeps
# the arithmetic on it finite. Allows for a few seconds of clock skew between pods on either side.
MAX_DEADLINE_AHEAD_MS = 5 * 60 * 1000
MAX_RGB8_SIDE = 8192  # rgb8 pixels arrive already resized to the model's input (224), never this big
# What the web tier accepts as X-Request-ID, and what it generates (uuid4 hex): safe to log and echo.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A W3C trace context (version 00, lowercase hex; all-zero ids are invalid): the caller's span, so the
# model server's spans join the web tier's trace. Other versions are refused rather than half-understood.
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


class Status(StrEnum):
    """Outcome of a request, carried in every reply."""

    OK = "OK"
    BAD_IMAGE = "BAD_IMAGE"  # not a decodable accepted photo, truncated, too many pixels, bad mode
    TOO_LARGE = "TOO_LARGE"  # image payload over the server's byte limit
    OVERLOADED = "OVERLOADED"  # bounded queue full, or the server is draining: try again / elsewhere
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # the request's deadline passed before it could be answered
    BAD_REQUEST = "BAD_REQUEST"  # malformed frames, bad header, unknown version or op
    INTERNAL = "INTERNAL"  # a bug or a runtime failure on the server


class ProtocolError(ValueError):
    """A message that does not follow this protocol; `status` says how to answer it."""

    def __init__(self, message: str, status: Status = Status.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """A classification (or ping) request as the client builds it and the server reads it."""

    request_id: str
    deadline_ms: int  # absolute, Unix epoch milliseconds: stale requests are refused even after a network cut
    op: str = OP_CLASSIFY
    top_k: int = 5
    image: bytes | memoryview = b""
    encoding: str = ENCODING_IMAGE
    shape: tuple[int, int, int] | None = None  # rgb8 only
    traceparent: str | None = None  # W3C trace context of the caller's span; only while tracing is on

    def remaining_s(self, now: float | None = None) -> float:
        """Seconds left before the deadline (negative when it has passed)."""
        return self.deadline_ms / 1000.0 - (time.time() if now is None else now)


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Reply:
    """The server's answer to one request."""

    request_id: str
    status: Status
    error: str | None = None
    predictions: list[Prediction] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)  # queue, preprocess, inference, total
    batch_size: int = 0
    model: str = ""
    # In ping replies: the model's input, so a client can send rgb8 pixels of the right size.
    input_size: int = 0
    crop_fraction: float = 0.0
    # In OK replies: the requests the server held unanswered as it replied (this one included), or its bound
    # when the queue filled while it held this one, and the bound (max_queue_size): a client can tell whether
    # the server had room to spare throughout; 0 when it does not say.
    queue_depth: int = 0
    queue_capacity: int = 0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


def tcp_endpoint(address: str, port: int) -> str:
    """A ZeroMQ tcp endpoint for a host or IP address; IPv6 addresses go in brackets."""
    if ":" in address:
        return f"tcp://[{address}]:{port}"
    return f"tcp://{address}:{port}"


def new_request_id() -> str:
    return uuid.uuid4().hex


def deadline_after_ms(timeout_ms: float) -> int:
    """An absolute deadline `timeout_ms` from now, in Unix epoch milliseconds."""
    return int(time.time() * 1000 + timeout_ms)


# --- requests -------------------------------------------------------------------------------------------


def encode_request(request: Request) -> list[bytes | memoryview]:
    """Frames for a request, delimiter first (a DEALER client sends exactly these)."""
    header = {"v": 1, "id": request.request_id, "op": request.op, "deadline_ms": request.deadline_ms}
    if request.op == OP_CLASSIFY:
        header["top_k"] = request.top_k
        if request.encoding != ENCODING_IMAGE:
            header["encoding"] = request.encoding
            header["shape"] = list(request.shape or ())
    if request.traceparent is not None:
        header["traceparent"] = request.traceparent
    frames: list[bytes | memoryview] = [DELIMITER, VERSION, json.dumps(header).encode()]
    if request.op == OP_CLASSIFY:
        frames.append(request.image)
    return frames


def split_envelope(frames: list[Any]) -> tuple[list[Any], list[Any]]:
    """Split a message received on a ROUTER/DEALER backend into (envelope, body).

    The envelope is every frame up to and including the first empty delimiter; it is sent back unchanged.
    Without a delimiter the first frame (the ROUTER's routing id) is the whole envelope, so even a
    malformed message can still be answered.
    """
    for i, frame in enumerate(frames):
        if len(frame) == 0:
            return frames[: i + 1], frames[i + 1 :]
    return frames[:1], frames[1:]


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ProtocolError(f"number {text[:20]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):  # json keeps the last of duplicates: two readers could disagree
        raise ProtocolError("duplicate key in a JSON object")
    return value


def _parse_json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    """Strict JSON: UTF-8 only, no NaN/Infinity, no duplicate keys, bounded size and nesting."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{what} is {len(raw)} bytes, over the {MAX_HEADER_BYTES}-byte limit")
    try:
        # Decoded here, not by json.loads, which would also guess UTF-16/32 from the first bytes.
        value = json.loads(
            bytes(raw).decode("utf-8"),
            parse_constant=_no_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except ProtocolError:
        raise
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[…": the C parser stops at the interpreter's recursion limit
        raise ProtocolError(f"{what} nests too deep") from None
    except ValueError as exc:  # an integer of more digits than int() converts
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _check_version(frame: bytes | memoryview) -> None:
    if bytes(frame) != VERSION:
        shown = bytes(frame[:16]).decode("ascii", "replace")
        raise ProtocolError(f"unsupported protocol version {shown!r}; this server speaks {VERSION.decode()}")


def _valid_id(rid: object) -> bool:
    return isinstance(rid, str) and REQUEST_ID.fullmatch(rid) is not None


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, not float: JSON 5.0 and true are refused


def _shown(value: object) -> str:
    """A refused value for an error message, cut short (it came from an untrusted peer)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def peek_request_id(body: list[Any]) -> str:
    """Best-effort request id of a (possibly malformed) request body, so error replies can carry it."""
    if len(body) < 2:
        return ""
    try:
        rid = _parse_json_object(body[1], "header").get("id")
    except ProtocolError:
        return ""
    return rid if _valid_id(rid) else ""


def decode_request(body: list[Any], now_ms: int | None = None) -> Request:
    """Parse the frames after the envelope into a Request (`now_ms`: the clock, for tests).

    :raise ProtocolError: on anything malformed; the caller answers with `exc.status`.
    """
    if len(body) < 2:
        raise ProtocolError(f"expected version, header and image frames, got {len(body)} frame(s)")
    _check_version(body[0])
    header = _parse_json_object(body[1], "header")
    rid = header.get("id")
    if not _valid_id(rid):
        raise ProtocolError("header.id must be 1 to 64 characters from A-Z a-z 0-9 . _ -")
    op = header.get("op", OP_CLASSIFY)
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(f"unknown op {_shown(op)}; known: {', '.join(OPS)}")
    deadline_ms = header.get("deadline_ms")
    if not _is_int(deadline_ms):
        raise ProtocolError("header.deadline_ms must be an integer (Unix epoch milliseconds)")
    latest_ms = (int(time.time() * 1000) if now_ms is None else now_ms) + MAX_DEADLINE_AHEAD_MS
    if not 0 <= deadline_ms <= latest_ms:  # a past deadline is fine here: answered DEADLINE_EXCEEDED
        raise ProtocolError(
            f"header.deadline_ms {_shown(deadline_ms)} is out of range: Unix epoch milliseconds, "
            f"at most {MAX_DEADLINE_AHEAD_MS // 1000} s from now"
        )
    traceparent = header.get("traceparent")
    if "traceparent" in header and not (isinstance(traceparent, str) and TRACEPARENT.fullmatch(traceparent)):
        raise ProtocolError(f"header.traceparent {_shown(traceparent)} is not a W3C traceparent (version 00)")
    top_k = header.get("top_k", 5)
    if not _is_int(top_k) or not 1 <= top_k <= MAX_CLASSES:
        raise ProtocolError(f"header.top_k must be an integer from 1 to {MAX_CLASSES}")
    if op == OP_PING:
        if len(body) != 2:
            raise ProtocolError("a ping carries no payload frame")
        return Request(request_id=rid, deadline_ms=deadline_ms, op=op, top_k=top_k, traceparent=traceparent)
    if len(body) != 3:
        raise ProtocolError(f"a classify request has exactly 3 frames after the envelope, got {len(body)}")
    encoding = header.get("encoding", ENCODING_IMAGE)
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError(f"unknown encoding {_shown(encoding)}; known: {', '.join(ENCODINGS)}")
    shape = None
    if encoding == ENCODING_RGB8:
        raw = header.get("shape")
        if not (
            isinstance(raw, list)
            and len(raw) == 3
            and all(_is_int(d) and 0 < d <= MAX_RGB8_SIDE for d in raw)
        ):
            raise ProtocolError(
                f"header.shape must be [height, width, 3] for rgb8, sides up to {MAX_RGB8_SIDE}"
            )
        shape = (raw[0], raw[1], raw[2])
        if shape[2] != 3 or shape[0] * shape[1] * 3 != len(body[2]):
            raise ProtocolError(f"rgb8 image frame is {len(body[2])} bytes, not {shape[0]}×{shape[1]}×3")
    return Request(rid, deadline_ms, op, top_k, body[2], encoding, shape, traceparent)


# --- replies --------------------------------------------------------------------------------------------


def encode_reply(reply: Reply) -> list[bytes]:
    """Frames for a reply (without the envelope, which the server prepends)."""
    body: dict[str, Any] = {"id": reply.request_id, "status": reply.status.value}
    if reply.error is not None:
        body["error"] = reply.error
    if reply.status is Status.OK:
        body["predictions"] = [
            {"label": p.label, "index": p.index, "probability": round(p.probability, 6)}
            for p in reply.predictions
        ]
        body["batch_size"] = reply.batch_size
        body["model"] = reply.model
    if reply.input_size:
        body["input"] = {"size": reply.input_size, "crop_fraction": reply.crop_fraction}
    if reply.timings_ms:
        body["timings_ms"] = {k: round(v, 3) for k, v in reply.timings_ms.items()}
    if reply.queue_capacity:
        body["queue"] = [reply.queue_depth, reply.queue_capacity]
    return [DELIMITER, VERSION, json.dumps(body, separators=(",", ":")).encode()]


def reply_frames(envelope: list[Any], reply: Reply) -> list[Any]:
    """The whole outgoing message on a server's backend: the request's envelope, then the reply.

    The envelope from split_envelope already ends with the delimiter; one without (a malformed request)
    gets one added, so the client always sees the same framing.
    """
    frames = encode_reply(reply)
    return [*envelope, *frames[1:]] if envelope and len(envelope[-1]) == 0 else [*envelope, *frames]


def decode_reply(frames: list[Any]) -> Reply:
    """Parse a reply as a DEALER client receives it (delimiter, version, JSON).

    :raise ProtocolError: when the server speaks another version or sends garbage.
    """
    if len(frames) != 3 or len(frames[0]) != 0:
        raise ProtocolError(f"expected delimiter, version and reply frames, got {len(frames)} frame(s)")
    _check_version(frames[1])
    try:
        body = json.loads(bytes(frames[2]))
        status = Status(body["status"])
        model_input = body.get("input", {})
        queue_depth, queue_capacity = body.get("queue", (0, 0))
        predictions = [
            Prediction(label=str(p["label"]), index=int(p["index"]), probability=float(p["probability"]))
            for p in body.get("predictions", [])
        ]
        return Reply(
            request_id=str(body["id"]),
            status=status,
            error=body.get("error"),
            predictions=predictions,
            timings_ms={str(k): float(v) for k, v in body.get("timings_ms", {}).items()},
            batch_size=int(body.get("batch_size", 0)),
            model=str(body.get("model", "")),
            input_size=int(model_input.get("size", 0)),
            crop_fraction=float(model_input.get("crop_fraction", 0.0)),
            queue_depth=int(queue_depth),
            queue_capacity=int(queue_capacity),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise ProtocolError(f"malformed reply: {exc!r}") from None
