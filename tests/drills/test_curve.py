"""S1 with CurveZMQ on: strangers get nothing from a real model server, known clients are served, keys rotate.

A stranger is a plaintext DEALER, a CurveZMQ client whose key is not on the allow-list, a client that has
a valid key but the wrong server key, or a raw TCP peer that skips libzmq. Each sends requests and waits
(poll with a timeout) for a reply that must never come; the server's request, malformed and dropped
counters must not move: nothing of theirs reached the proxy or the pipeline. Rotation: a key directory with
two client keys admits both; after the old key is removed and the server restarted, the old key is refused.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from services import keys, protocol
from services.protocol import Request
from tests.support.servers import Proc, model_server

pytestmark = pytest.mark.integration

STRANGER_WAIT_MS = 1_500  # an admitted client is answered in a few ms; a stranger gets this long to be
FLOOD_FRAMES = 100_000  # the S1 message that costs an admitted peer's server ~20 MB of libzmq buffers
BIG_FRAMES, BIG_FRAME = 12, 20 * 1024 * 1024  # the S1 message an admitted peer's server buffers whole
# ZMTP 3.0 greeting of a peer that offers the NULL mechanism (no keys): signature, version, mechanism, filler
NULL_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)
EVENT_NAMES = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by the authenticator",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake protocol error",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_DISCONNECTED: "disconnected by the server",
}


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    with zmq.Context() as context:
        yield context


@pytest.fixture
def servers() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def counters(proc: Proc) -> dict[str, float]:
    """Requests answered (every status), malformed and dropped messages, from the server's /metrics."""
    url = f"http://127.0.0.1:{proc.ports['health']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for name in ("requests", "malformed_messages", "dropped_messages"):
        samples = re.findall(rf"^zerolens_model_{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
        out[name] = sum(float(v) for v in samples)
    return out


def rss_mb(proc: Proc) -> float:
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1)) / 1024


def dealer(
    ctx: zmq.Context, proc: Proc, secret: bytes | None = None, server_key: bytes | None = None
) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER connected to proc (a CurveZMQ client when `secret` is given) and its monitor socket."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if secret is not None:
        keys.make_client(sock, keys.ClientKeys(keys.public_key(secret), secret, server_key))
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    sock.connect(f"tcp://127.0.0.1:{proc.ports['zmq']}")
    return sock, monitor


def offer(sock: zmq.Socket, frames: list[bytes], wait_ms: int = 2_000) -> bool:
    """Queue a stranger's message if its socket takes it within wait_ms; False when it never had room.

    A DEALER whose handshakes keep failing may have no pipe to queue into (a blocking send would wait
    forever), which keeps the message from the server just as well.
    """
    if not sock.poll(wait_ms, zmq.POLLOUT):
        return False
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)  # whole or nothing: HWM counts whole messages
    except zmq.Again:
        return False
    return True


def ping() -> list[bytes]:
    return protocol.encode_request(Request("ping", protocol.deadline_after_ms(10_000), op=protocol.OP_PING))


def answer(sock: zmq.Socket, wait_ms: int) -> str:
    """The reply's status, or "nothing" when none came within wait_ms."""
    if not sock.poll(wait_ms):
        return "nothing"
    return protocol.decode_reply(sock.recv_multipart()).status.value


def stream_raw(proc: Proc) -> int:
    """Write a NULL greeting, then 12 frames of 20 MiB straight to the port, as a peer without libzmq would;
    how many whole frames went out before the server hung up."""
    frame = b"\x03" + BIG_FRAME.to_bytes(8, "big") + bytes(BIG_FRAME)  # a long frame, more to come
    frames = 0
    with socket.create_connection(("127.0.0.1", proc.ports["zmq"]), timeout=10) as sock:
        try:
            sock.sendall(NULL_GREETING)
            for _ in range(BIG_FRAMES):
                sock.sendall(frame)
                frames += 1
        except OSError:  # reset or broken pipe: the server hung up
            pass
    return frames


def first_event(monitor: zmq.Socket) -> str:
    """What the client's own socket saw of the handshake (the first event)."""
    if not monitor.poll(0):
        return "none"
    return EVENT_NAMES.get(recv_monitor_message(monitor)["event"], "other")


def close(*socks: zmq.Socket) -> None:
    for sock in socks:
        sock.close(linger=0)


def test_strangers_get_nothing_and_reach_nothing_while_a_known_client_is_served(
    tmp_path, ctx, servers, drill_record
):
    model = model_server(tmp_path).start()
    servers.append(model)
    client = keys.load_client_keys(model.curve_keys_dir)
    before, rss_before = counters(model), rss_mb(model)
    unknown_public, unknown_secret = zmq.curve_keypair()
    strangers = {
        "plaintext": dealer(ctx, model),
        "unknown_key": dealer(ctx, model, unknown_secret, client.server),
        "wrong_server_key": dealer(ctx, model, client.secret, zmq.curve_keypair()[0]),
    }
    # Each stranger sends requests; one sends a message of 100,000 frames (~20 MB buffered by the server of an
    # admitted peer), one 12 frames of 20 MiB (240 MB), and a raw TCP peer streams 240 MB after a greeting.
    queued = [offer(sock, ping()) for sock, _ in strangers.values()]
    queued.append(offer(strangers["plaintext"][0], [b"x" * 16] * FLOOD_FRAMES))
    queued.append(offer(strangers["unknown_key"][0], [bytes(BIG_FRAME)] * BIG_FRAMES))
    raw_frames = stream_raw(model)
    replies = {name: answer(sock, STRANGER_WAIT_MS) for name, (sock, _) in strangers.items()}
    events = {name: first_event(monitor) for name, (_, monitor) in strangers.items()}
    after_strangers, rss_after = counters(model), rss_mb(model)

    known, known_monitor = dealer(ctx, model, client.secret, client.server)
    known.send_multipart(ping())
    known_answer = answer(known, 10_000)
    served = counters(model)
    refused_in_log = unknown_public.decode() in model.log()
    for sock, monitor in strangers.values():
        close(sock, monitor)
    close(known, known_monitor)

    drill_record(
        "S1",
        "Rogue ZeroMQ peers with CurveZMQ on",
        plaintext_replies=int(replies["plaintext"] != "nothing"),
        unknown_key_replies=int(replies["unknown_key"] != "nothing"),
        wrong_server_key_replies=int(replies["wrong_server_key"] != "nothing"),
        waited_ms=STRANGER_WAIT_MS,
        stranger_messages_queued=f"{sum(queued)} of {len(queued)}",
        plaintext_client_saw=events["plaintext"],
        unknown_key_client_saw=events["unknown_key"],
        wrong_server_key_client_saw=events["wrong_server_key"],
        counters_moved_by_strangers=int(sum(after_strangers.values()) - sum(before.values())),
        raw_peer_frames_of_20_mib_sent=f"{raw_frames} of {BIG_FRAMES}",
        rss_growth_after_strangers_mb=round(rss_after - rss_before, 1),
        authorised_ok=known_answer,
    )
    assert replies == {"plaintext": "nothing", "unknown_key": "nothing", "wrong_server_key": "nothing"}
    assert after_strangers == before, "a stranger's message reached the proxy or the pipeline"
    assert rss_after - rss_before < 10, "the server buffered a stranger's message"
    assert raw_frames < BIG_FRAMES  # hung up on at the greeting, long before 240 MB
    assert events["unknown_key"] == "refused by the authenticator" and refused_in_log
    assert known_answer == "OK"
    assert served["requests"] == before["requests"] + 1
    assert served["malformed_messages"] == before["malformed_messages"]


def test_two_client_keys_are_admitted_during_a_rotation_and_the_removed_one_is_refused_after(
    tmp_path, ctx, servers, drill_record
):
    keys_dir = tmp_path / "curve"
    keys.generate(keys_dir)
    old = keys.read_key(keys_dir / "client.secret")
    new = zmq.curve_keypair()[1]
    server_key = keys.read_key(keys_dir / "server.public")

    def pings(proc: Proc) -> dict[str, str]:
        out = {}
        for name, secret in (("old", old), ("new", new)):
            sock, monitor = dealer(ctx, proc, secret, server_key)
            sock.send_multipart(ping())
            out[name] = answer(sock, STRANGER_WAIT_MS)
            close(sock, monitor)
        return out

    # 1. client-next.secret joins the allow-list; the model servers restart (roll) with both keys.
    (keys_dir / "client-next.secret").write_bytes(new + b"\n")
    during = model_server(tmp_path, curve_keys_dir=keys_dir).start()
    servers.append(during)
    both = pings(during)
    during.stop()
    # 2. The web tier switches to the new key (old kept as client-previous.secret); 3. the old one goes
    # and the model servers restart once more.
    (keys_dir / "client.secret").replace(keys_dir / "client-previous.secret")
    (keys_dir / "client-next.secret").replace(keys_dir / "client.secret")
    (keys_dir / "client-previous.secret").unlink()
    (keys_dir / "client.public").unlink()  # the old key's public half: it would still admit it
    after = model_server(tmp_path, curve_keys_dir=keys_dir).start()
    servers.append(after)
    rotated = pings(after)

    drill_record(
        "S1",
        "CurveZMQ client key rotation: two keys, then one",
        with_both_keys_old=both["old"],
        with_both_keys_new=both["new"],
        after_removal_old=rotated["old"],
        after_removal_new=rotated["new"],
    )
    assert both == {"old": "OK", "new": "OK"}
    assert rotated == {"old": "nothing", "new": "OK"}
