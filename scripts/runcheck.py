"""`make run`'s checks around the servers it starts: its ports free before, the web tier ready after.

`runcheck.py ports` exits 0 when the web, ZeroMQ and health ports can be bound, else prints one line naming
the port and how to choose another, and exits 2. `runcheck.py ready` waits until the model server's and then
the web tier's /readyz answer 200 and prints the one line that says where to open it. Both read the ports as
the servers do (services/config.py).
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services import config  # noqa: E402  (after the path: run as a script)

WILDCARDS = {"", "0.0.0.0", "::"}
LOOPBACKS = {"localhost", "127.0.0.1", "::1"}
SUGGEST_OFFSET = 100  # 8000 busy: suggest 8100 (or the next free one above it)
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Listener:
    """A port `make run` opens: what listens there, where, and the make variable that moves it."""

    role: str
    host: str
    port: int
    variable: str


class Refused(Exception):
    """A reason not to start, in one line."""


def split_bind(bind: str) -> tuple[str, int]:
    """("127.0.0.1", 8000) for "127.0.0.1:8000", ("::1", 8000) for "[::1]:8000"."""
    host, _, port = bind.rpartition(":")
    if not port.isdigit():
        raise Refused(f"web_bind {bind!r} is not host:port (make run serves over TCP)")
    return host.strip("[]"), int(port)


def listeners() -> list[Listener]:
    """The ports the web tier and the model server will bind, read from the settings as they read them."""
    try:
        web = config.load(config.WebConfig)
        model = config.load(config.ModelConfig)
    except config.ConfigError as exc:
        raise Refused(f"bad configuration: {exc}") from None
    web_host, web_port = split_bind(web.web_bind)
    return [
        Listener("web", web_host, web_port, "WEB_PORT"),
        Listener("model server", model.host, model.port, "MODEL_PORT"),
        Listener("model server health", model.host, model.health_port, "HEALTH_PORT"),
    ]


def in_use(host: str, port: int) -> bool:
    """Whether something already listens where a server would bind (host, port).

    :raise OSError: the address cannot be bound for another reason (not an address of this machine, ...).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: a port whose old connections linger in TIME_WAIT is free to them.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _overlap(a: Listener, b: Listener) -> bool:
    return a.port == b.port and (a.host == b.host or a.host in WILDCARDS or b.host in WILDCARDS)


def _suggest(busy: Listener, taken: set[int]) -> int:
    """A free port near the busy one for the same host (8100 for 8000), not one of the others."""
    for port in range(busy.port + SUGGEST_OFFSET, min(busy.port + 2 * SUGGEST_OFFSET, 65536)):
        if port not in taken and not in_use(busy.host, port):
            return port
    return busy.port + SUGGEST_OFFSET


def check_ports(ports: list[Listener]) -> None:
    """:raise Refused: a port out of range, two servers on one port, or a port something else holds."""
    for listener in ports:
        if not 0 < listener.port < 65536:
            raise Refused(f"{listener.variable}={listener.port}: choose a port number from 1 to 65535")
    for i, a in enumerate(ports):
        for b in ports[i + 1 :]:
            if _overlap(a, b):
                raise Refused(f"{a.variable} and {b.variable} are both {a.port}; choose different ports")
    busy = []
    for listener in ports:
        try:
            if in_use(listener.host, listener.port):
                busy.append(listener)
        except OSError as exc:
            raise Refused(
                f"cannot listen on {listener.host}:{listener.port} ({listener.role}): {exc.strerror}"
            ) from None
    if not busy:
        return
    taken = {listener.port for listener in ports}
    moves = []
    for listener in busy:
        port = _suggest(listener, taken)
        taken.add(port)
        moves.append(f"{listener.variable}={port}")
    named = " and ".join(f"{listener.port} ({listener.role})" for listener in busy)
    if len(busy) == 1:
        raise Refused(f"port {named} is in use; stop what holds it or choose another: make run {moves[0]}")
    raise Refused(
        f"ports {named} are in use; stop what holds them or choose others: make run {' '.join(moves)}"
    )


def _url_host(host: str, for_browser: bool) -> str:
    """Where to reach a server bound to `host`: localhost in a browser, the loopback address for a probe."""
    if host in WILDCARDS or host in LOOPBACKS:
        if for_browser:
            return "localhost"
        host = "::1" if host in ("::", "::1") else "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _readyz(url: str) -> tuple[int, str]:
    """The status and first line of the answer of /readyz (0 and the error when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode(errors="replace").strip()
        return exc.code, body.splitlines()[0] if body else ""
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def wait_ready(ports: list[Listener], timeout_s: float) -> bool:
    """Poll the model server's /readyz, then the web tier's, until each answers 200 (True) or `timeout_s`
    passes (False).

    The model server's first: the web tier's /readyz asks the model server, and logs a warning while none
    answers, which would look like a fault while the model merely loads.
    """
    web, _, health = ports
    urls = [f"http://{_url_host(p.host, for_browser=False)}:{p.port}/readyz" for p in (health, web)]
    deadline = time.monotonic() + timeout_s
    while urls:
        url = urls[0]
        status, reason = _readyz(url)
        if status == 200:
            urls.pop(0)
            continue
        if time.monotonic() > deadline:
            answer = f"answers {status} {reason}".rstrip() if status else f"does not answer ({reason})"
            say(
                f"zerolens: not ready after {timeout_s:.0f} s: {url} {answer}; see the logs above", sys.stderr
            )
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def say(line: str, stream: TextIO) -> None:
    """One line in one write: the servers share the terminal, and with PYTHONUNBUFFERED print() writes the
    text and its newline apart, so a server's log line could land in between."""
    stream.write(line + "\n")
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C reaches the whole process group: end quietly, as the servers do, without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("check", choices=["ports", "ready"])
    parser.add_argument("--timeout-s", type=float, default=300, help="ready: how long to wait (300)")
    args = parser.parse_args(argv)
    try:
        ports = listeners()
        if args.check == "ports":
            check_ports(ports)
            return 0
    except Refused as exc:
        say(f"zerolens: {exc}", sys.stderr)
        return 2
    web = ports[0]
    if not wait_ready(ports, args.timeout_s):
        return 1
    say(f"zerolens is ready: open http://{_url_host(web.host, for_browser=True)}:{web.port}", sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
