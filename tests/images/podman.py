"""Podman, network-namespace and timing helpers for the image tests (tests/images/test_images.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB_IMAGE = os.environ.get("ZEROLENS_WEB_IMAGE", "zerolens/web:dev")
MODEL_IMAGE = os.environ.get("ZEROLENS_MODEL_IMAGE", "zerolens/model") + ":dev-cpu"
UID = 10001
TIMINGS: dict[str, float] = {}


def skip_reason() -> str | None:
    if os.environ.get("ZEROLENS_SKIP_IMAGE_TESTS") == "1":
        return "ZEROLENS_SKIP_IMAGE_TESTS=1"
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux (rootful podman, network namespaces)"
    missing = [tool for tool in ("ip", "nsenter") if shutil.which(tool) is None]
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        missing.append("podman (or apt-get to install it)")
    return f"missing {', '.join(missing)}" if missing else None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    conf = ROOT / "build" / "podman" / "containers.conf"  # written by scripts/podman-setup.sh
    if "CONTAINERS_CONF" not in env and conf.exists():
        env["CONTAINERS_CONF"] = str(conf)
    return env


def run(cmd: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def record(phase: str, seconds: float) -> None:
    TIMINGS[phase] = round(seconds, 1)
    out = ROOT / "build" / "images" / "test-timings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(TIMINGS, indent=2) + "\n")
    print(f"[images] {phase}: {seconds:.1f} s")


class Namespace:
    """A network namespace of the test's own, and podman and Python run inside it (via nsenter)."""

    def __init__(self) -> None:
        self.name = f"zl-img-{secrets.token_hex(4)}"
        self.nsenter = ["nsenter", f"--net=/run/netns/{self.name}"]

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        # nsenter, not `ip netns exec`: the latter remounts /sys, which breaks runc.
        return run([*self.nsenter, "podman", *args], timeout=timeout, check=check)

    def http(self, method: str, url: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        """One HTTP request made from inside the namespace: (status, body); status 0 = no connection."""
        client = (
            "import sys, urllib.error, urllib.request\n"
            "method, url, ctype = sys.argv[1:4]\n"
            "data = sys.stdin.buffer.read() if method == 'POST' else None\n"
            "req = urllib.request.Request(url, data=data, method=method)\n"
            "if ctype:\n"
            "    req.add_header('Content-Type', ctype)\n"
            "try:\n"
            "    with urllib.request.urlopen(req, timeout=15) as r:\n"
            "        status, payload = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    status, payload = e.code, e.read()\n"
            "except OSError as e:\n"
            "    status, payload = 0, str(e).encode()\n"
            "sys.stdout.buffer.write(b'%d\\n' % status + payload)\n"
        )
        cmd = [*self.nsenter, sys.executable, "-c", client, method, url, content_type]
        proc = subprocess.run(cmd, input=body, capture_output=True, timeout=30)
        status, _, payload = proc.stdout.partition(b"\n")
        return int(status or 0), payload


class Stack:
    """The model and web containers on one podman network."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        suffix = ns.name.removeprefix("zl-img-")
        self.network = f"zl-img-{suffix}"
        self.model = f"zl-img-model-{suffix}"
        self.web = f"zl-img-web-{suffix}"

    def web_url(self, path: str) -> str:
        ip = self.ns.podman(
            "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", self.web
        ).stdout.strip()
        return f"http://{ip}:8000{path}"

    def logs(self, name: str) -> str:
        proc = self.ns.podman("logs", "--tail", "40", name, check=False)
        return proc.stdout + proc.stderr

    def running(self, name: str) -> bool:
        proc = self.ns.podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        return proc.stdout.strip() == "true"


# As Kubernetes runs them: readOnlyRootFilesystem, an emptyDir at /tmp, drop ALL, no privilege escalation.
HARDENED = [
    "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=256m,mode=1777",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
]  # fmt: skip


def wait(what: str, ready: Any, stack: Stack, names: list[str], timeout: float = 120) -> float:
    """Poll `ready()` until it is true; fail at once if a container exited. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready():
            return time.monotonic() - started
        for name in names:
            if not stack.running(name):
                pytest.fail(f"{name} exited while waiting for {what}:\n{stack.logs(name)}")
        time.sleep(0.2)
    logs = "\n".join(f"--- {n}\n{stack.logs(n)}" for n in names)
    pytest.fail(f"{what}: not ready after {timeout:.0f} s\n{logs}")
