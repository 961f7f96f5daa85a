"""Real server processes for the integration tests and the benchmark: the model server and gunicorn.

Each starts on free loopback ports (never 8000/5576/8081), is waited on through its readiness endpoint
(no fixed sleeps), and is stopped by its owner: `with model_server(tmp).start() as model:` stops it when the
block ends, however it ends. The pair talks CurveZMQ by default, with keys generated once
into <tmp>/curve (curve_keys()), which every server started with the same tmp shares.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.support.environ import clean_environ

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "build" / "models" / "efficientnet_lite0"
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never one of the defaults)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in (8000, 5576, 8081):
            return port


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


@dataclass
class Proc:
    """A server process, how to reach it, and, as a context manager, its stop: `with proc.start() as p:`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str  # ready when it answers 200; or, when it starts with "log:", when the log shows that text
    log_path: Path
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    curve_keys_dir: Path | None = None  # the CurveZMQ keys it uses; None with zmq_security=plaintext
    children: int = 0  # child processes it has once ready (gunicorn's workers boot after the first answers)

    def start(self, timeout_s: float = 120) -> Proc:
        """Start the process and wait until it is ready; if it is not, stop it and raise RuntimeError."""
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _running.append(self)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
                if self._ready() and len(_children(self.proc.pid)) >= self.children:
                    return self
                time.sleep(0.1)
        except BaseException:  # it exited, or the wait was interrupted (Ctrl-C): leave nothing running
            with contextlib.suppress(RuntimeError):
                self.stop()
            raise
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.log()}")

    def __enter__(self) -> Proc:
        """The started process itself (start() returns it, so `with model_server(tmp).start() as model:`)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started: write `with server.start() as proc:`")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop it however the block ended (SIGTERM; a process still running 30 s later is killed)."""
        self.stop()

    def run_to_exit(
        self, timeout_s: float = 60, watch: Callable[[], None] | None = None, poll_s: float = 0.05
    ) -> int:
        """Start a process that must exit by itself (a server refusing to start) and return its exit status.

        `watch` runs between bounded waits on the process (e.g. to check that a port stays closed); the wait
        is the pacing, so the exit is seen at once. Still running after `timeout_s`: killed, RuntimeError.
        """
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        _running.append(self)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self.proc.wait(poll_s)
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL, timeout_s=5)
                raise RuntimeError(f"{self.name} still ran after {timeout_s} s:\n{self.log()}")
            if watch is not None:
                watch()

    def _ready(self) -> bool:
        if self.ready_url.startswith("log:"):
            return self.ready_url[4:] in self.log()
        return http_status(self.ready_url, timeout=1) == 200

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of the process and of each child (gunicorn's workers), in MB."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        pids = [self.proc.pid, *_children(self.proc.pid)]
        return {str(pid): _rss_kb(pid) / 1024 for pid in pids}

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process and its live children (gunicorn's workers) used so far."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return sum(_cpu_s(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            # the log says where it hung (draining, joining threads, a gunicorn worker)
            raise RuntimeError(
                f"{self.name} still ran {timeout_s} s after signal {sig}; killed. Its log:\n{self.log()}"
            ) from None


_running: list[Proc] = []


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: a failed test or benchmark never leaves a server holding ports and cores."""
    for proc in _running:
        with contextlib.suppress(RuntimeError):
            proc.stop(signal.SIGKILL, timeout_s=5)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cpu_s(pid: int) -> float:
    try:  # utime and stime: the 14th and 15th fields, counted after the parenthesised command name
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat; idle and iowait are idle)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(values)
    return (total - values[3] - values[4]) / _CLOCK_TICKS, total / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def ensure_model() -> Path:
    """The artifacts `make model` builds; built here too so the tests also run on their own (or rebuilt, when
    the directory predates a file the exporter now writes)."""
    from services.exporter.export import FILES

    manifest = MODEL_DIR / "manifest.json"
    if not manifest.exists() or not set(FILES) <= json.loads(manifest.read_text())["files"].keys():
        subprocess.run(
            [sys.executable, "-m", "services.exporter", "--out", str(MODEL_DIR)], cwd=ROOT, check=True
        )
    return MODEL_DIR


def curve_keys(tmp: Path) -> Path:
    """<tmp>/curve, holding a server and a client key pair (generated on first use)."""
    from services import keys

    directory = tmp / "curve"
    if not (directory / keys.SERVER_SECRET).exists():
        keys.generate(directory)
    return directory


def _security_env(tmp: Path, zmq_security: str, keys_dir: Path | None) -> tuple[dict[str, str], Path | None]:
    if zmq_security == "plaintext":
        return {"ZEROLENS_ZMQ_SECURITY": "plaintext"}, None
    keys_dir = keys_dir or curve_keys(tmp)
    return {"ZEROLENS_ZMQ_SECURITY": zmq_security, "ZEROLENS_CURVE_KEYS_DIR": str(keys_dir)}, keys_dir


def model_server(
    tmp: Path,
    runtime: str = "tflite",
    port: int | None = None,
    zmq_security: str = "curve",
    curve_keys_dir: Path | None = None,
    **settings: object,
) -> Proc:
    """A model server process (not started yet) on free ports; CurveZMQ with curve_keys(tmp) by default."""
    port = port or free_port()
    health = free_port()
    env = clean_environ()
    env |= {
        "ZEROLENS_HOST": "127.0.0.1",
        "ZEROLENS_PORT": str(port),
        "ZEROLENS_HEALTH_PORT": str(health),
        "ZEROLENS_MODEL_RUNTIME": runtime,
        "ZEROLENS_MODEL_DIR": str(ensure_model()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    security, keys_dir = _security_env(tmp, zmq_security, curve_keys_dir)
    env |= security
    env |= {f"ZEROLENS_{k.upper()}": str(v) for k, v in settings.items()}
    return Proc(
        name=f"model server ({runtime})",
        argv=[sys.executable, "-m", "services.model"],
        env=env,
        ready_url=f"http://127.0.0.1:{health}/readyz",
        log_path=tmp / f"model-{runtime}-{port}.log",
        ports={"zmq": port, "health": health},
        curve_keys_dir=keys_dir,
    )


def web_server(
    tmp: Path,
    model_port: int,
    zmq_security: str = "curve",
    curve_keys_dir: Path | None = None,
    **settings: object,
) -> Proc:
    """A gunicorn web tier (not started yet) pointed at a model server on loopback.

    CurveZMQ with the keys of a model_server() given the same tmp, unless curve_keys_dir says otherwise.
    """
    port = free_port()
    env = clean_environ()
    env |= {
        "ZEROLENS_WEB_BIND": f"127.0.0.1:{port}",
        "ZEROLENS_MODEL_SERVER": f"127.0.0.1:{model_port}",
        "ZEROLENS_WEB_WORKERS": "2",
    }
    security, keys_dir = _security_env(tmp, zmq_security, curve_keys_dir)
    env |= security
    env |= {f"ZEROLENS_{k.upper()}": str(v) for k, v in settings.items()}
    return Proc(
        children=int(env["ZEROLENS_WEB_WORKERS"]),
        name="web",
        argv=[str(BIN / "gunicorn"), "-c", "services/web/gunicorn.conf.py", "services.web:create_app()"],
        env=env,
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_path=tmp / f"web-{port}.log",
        ports={"http": port},
        curve_keys_dir=keys_dir,
    )


def local_run(tmp: Path) -> Proc:
    """What `make run` starts (scripts/run.sh: the model server and the web tier), on free ports."""
    web, zmq_port, health = free_port(), free_port(), free_port()
    env = clean_environ()
    env |= {
        "BIN": str(BIN),
        "MODEL_DIR": str(ensure_model()),
        "WEB_PORT": str(web),
        "MODEL_PORT": str(zmq_port),
        "HEALTH_PORT": str(health),
        "ZEROLENS_CURVE_KEYS_DIR": str(tmp / "curve"),
    }
    return Proc(
        name="make run",
        argv=["bash", "scripts/run.sh"],
        env=env,
        ready_url=f"http://127.0.0.1:{web}/readyz",
        log_path=tmp / f"run-{web}.log",
        ports={"http": web, "zmq": zmq_port, "health": health},
    )
