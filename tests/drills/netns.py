"""Separate hosts for the drills: a web namespace and a model namespace, linked to each other and to the test.

    test (root namespace) ──veth── web ns ──veth── model ns
               └──────────────────veth───────────────┘   (health and metrics only)

The test reaches the web tier and the model server's health port over their own links; the web → model
link is the one the drills cut, silently (blackhole routes) or loudly (TCP resets from iptables). Everything
is created with a random name and removed by `close()`, whatever happened.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

from tests.support.servers import Proc


def available() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"zlprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _free_prefix() -> int:
    """A second octet X such that 10.X.0.0/16 is routed nowhere on this machine."""
    shown = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
    routes = shown.stdout
    used = set()
    for word in routes.split():
        with contextlib.suppress(ValueError):
            used.add(ipaddress.ip_network(word, strict=False))
    for second in range(200, 255):
        mine = ipaddress.ip_network(f"10.{second}.0.0/16")
        if not any(mine.overlaps(net) for net in used if net.prefixlen > 0):
            return second
    raise RuntimeError("no free 10.x.0.0/16 for the drill's namespaces")


@dataclass
class Hosts:
    """Two namespaces ("web", "model") and their addresses."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    created: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        x = _free_prefix()
        self.web, self.model = f"zlweb{self.tag}", f"zlmodel{self.tag}"
        self.web_ip = f"10.{x}.1.2"  # the test reaches the web tier here
        self.model_health_ip = f"10.{x}.2.2"  # and the model server's health port here
        self.web_link_ip, self.model_link_ip = f"10.{x}.3.1", f"10.{x}.3.2"  # web ↔ model
        try:
            for ns in (self.web, self.model):
                _run("ip", "netns", "add", ns)
                self.created.append(ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            self._link(None, f"10.{x}.1.1", self.web, self.web_ip, "w")
            self._link(None, f"10.{x}.2.1", self.model, self.model_health_ip, "m")
            self._link(self.web, self.web_link_ip, self.model, self.model_link_ip, "x")
        except BaseException:
            self.close()
            raise

    def _link(self, ns_a: str | None, ip_a: str, ns_b: str, ip_b: str, kind: str) -> None:
        a, b = f"zl{self.tag}{kind}a", f"zl{self.tag}{kind}b"
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self.links.append(a)
        for ns, dev, ip in ((ns_a, a, ip_a), (ns_b, b, ip_b)):
            if ns is not None:
                _run("ip", "link", "set", dev, "netns", ns)
            where = ["-n", ns] if ns is not None else []
            _run("ip", *where, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", *where, "link", "set", dev, "up")

    def inside(self, ns: str, proc: Proc) -> Proc:
        """The same server process, started inside namespace `ns`."""
        proc.argv = ["ip", "netns", "exec", ns, *proc.argv]
        return proc

    def cut(self, reset: bool) -> None:
        """Cut the web ↔ model link both ways: silently (packets vanish) or with TCP resets."""
        for ns, peer in ((self.web, self.model_link_ip), (self.model, self.web_link_ip)):
            if reset:
                for chain, match in (("OUTPUT", "-d"), ("INPUT", "-s")):
                    _run(
                        "ip", "netns", "exec", ns, "iptables", "-A", chain, "-p", "tcp", match, peer,
                        "-j", "REJECT", "--reject-with", "tcp-reset",
                    )  # fmt: skip
            else:
                _run("ip", "-n", ns, "route", "add", "blackhole", f"{peer}/32")

    def heal(self, reset: bool) -> None:
        for ns, peer in ((self.web, self.model_link_ip), (self.model, self.web_link_ip)):
            if reset:
                _run("ip", "netns", "exec", ns, "iptables", "-F")
            else:
                _run("ip", "-n", ns, "route", "del", "blackhole", f"{peer}/32")

    def close(self) -> None:
        for link in self.links:  # a veth pair goes with either end; its end may be in a namespace already
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.links.clear()
        self.created.clear()
