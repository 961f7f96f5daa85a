"""Start a peer on free loopback ports from its own venv, wait until it classifies a photo, stop it.

Peers run several processes (Triton: the PyTriton process, tritonserver and its Python backend stubs;
Mosec: its Rust front and a process per worker; LitServe: the API server and its workers), so CPU time and
memory are summed over the whole process tree, read from /proc.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen
from bench.peers import PEERS, venvs
from tests.support.servers import Proc, free_port


@dataclass
class PeerProc(Proc):
    """A peer's root process; ready when `probe` answers 200, measured over its whole process tree."""

    probe: tuple[str, loadgen.Body] | None = field(default=None, repr=False)

    def _ready(self) -> bool:
        url, body = self.probe  # type: ignore[misc]
        return post(url, body) == 200

    def cpu_s(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return sum(_cpu_s(pid) for pid in tree(self.proc.pid))

    def rss_mb(self) -> dict[str, float]:
        if self.proc is None or self.proc.poll() is not None:
            return {}
        return {str(pid): _rss_kb(pid) / 1024 for pid in tree(self.proc.pid)}

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        """Stop the root, then whatever it left behind (LitServe's workers outlive their parent's SIGTERM)."""
        descendants = tree(self.proc.pid)[1:] if self.proc is not None and self.proc.poll() is None else []
        try:
            return super().stop(sig, timeout_s)
        finally:
            _end(descendants, timeout_s=10)


@dataclass(frozen=True)
class Peer:
    """How to run one peer: its server's argv (from its ports), its predict URL and the body it takes."""

    argv: Callable[[dict[str, int]], list[str]]
    ports: tuple[str, ...]
    url: Callable[[dict[str, int]], str]
    encode: Callable[[bytes], loadgen.Body]
    # Triton's Python backend stub loads whichever libpython3.X the loader finds first; it must be the one
    # whose standard library the venv runs (a distribution's older 3.11 next to a newer one breaks it)
    own_libpython: bool = False


SPECS = {
    "triton": Peer(
        argv=lambda p: ["-m", "bench.peers.triton_server", str(p["http"]), str(p["grpc"]), str(p["metrics"])],
        ports=("http", "grpc", "metrics"),
        url=lambda p: f"http://127.0.0.1:{p['http']}/v2/models/efficientnet_lite0/infer",
        encode=loadgen.oip_binary,
        own_libpython=True,
    ),
    "mosec": Peer(
        argv=lambda p: ["-m", "bench.peers.mosec_server", "--address", "127.0.0.1", "--port", str(p["http"])],
        ports=("http",),
        url=lambda p: f"http://127.0.0.1:{p['http']}/inference",
        encode=loadgen.raw,
    ),
    "litserve": Peer(
        argv=lambda p: ["-m", "bench.peers.litserve_server", str(p["http"])],
        ports=("http",),
        url=lambda p: f"http://127.0.0.1:{p['http']}/predict",
        encode=loadgen.json_base64,
    ),
}
assert set(SPECS) == set(PEERS)
START_TRIES = 3


def start(
    name: str, tmp: Path, timeout_s: float = 300
) -> tuple[PeerProc, str, Callable[[bytes], loadgen.Body]]:
    """Install (once), start and wait for a peer; returns it, its predict URL and its body encoder."""
    spec = SPECS[name]
    python = venvs.ensure(name, log=tmp / f"{name}-install.log")
    ports = {port: free_port() for port in spec.ports}
    url = spec.url(ports)
    env = {**os.environ, "PYTHONPATH": str(venvs.ROOT), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("VIRTUAL_ENV", None)
    if spec.own_libpython:
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    proc = PeerProc(
        name=name,
        argv=[str(python), *spec.argv(ports)],
        env=env,
        ready_url=url,
        log_path=tmp / f"{name}.log",
        ports=ports,
        probe=(url, spec.encode(probe_photo())),
    )
    for attempt in range(START_TRIES):
        try:
            return proc.start(timeout_s=timeout_s), url, spec.encode
        except RuntimeError:
            # PyTriton's second model instance asks the first for its configuration over a socket the
            # first may not have opened yet (tritonserver loads instances in parallel); the server then
            # exits. Another start usually wins the race.
            if attempt == START_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def post(url: str, body: loadgen.Body, timeout: float = 30) -> int:
    """One request's HTTP status; 0 when nothing answers (yet)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=body[0], headers=loadgen.headers(body))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def probe_photo() -> bytes:
    """A small JPEG for the readiness probe."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 160, 200)).save(out, "JPEG")
    return out.getvalue()


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _end(pids: list[int], timeout_s: float) -> None:
    """SIGTERM each process still alive, SIGKILL those still there after timeout_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if _signal(pid, sig)]
        deadline = time.monotonic() + timeout_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in alive if _signal(pid, 0)]
        if not alive:
            return


def _signal(pid: int, sig: int) -> bool:
    """Send sig; False when the process is gone (a zombie counts as gone: only its parent can reap it)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        os.kill(pid, sig)
        return True
    except (OSError, IndexError):
        return False


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    try:  # utime and stime: fields 14 and 15, counted after the parenthesised command name
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _rss_kb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    return 0.0
