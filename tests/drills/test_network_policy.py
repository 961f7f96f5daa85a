"""S2: the chart's NetworkPolicy, enforced between separate hosts, lets only web pods reach the ZeroMQ port.

Each pod is a network namespace on one bridge (the "cluster network", itself in a namespace). The policies
the chart renders for the model pod are translated, rule by rule, into iptables rules in the model's
namespace: a source pod is let through on a port only when some ingress rule selects its labels there,
everything else new is dropped (the policy isolates the pod for Ingress). A real model server listens on the
chart's zmq port. A pod with the web tier's labels gets its ping answered; a pod of the same release without
them (a second model pod) cannot even open a TCP connection, while the metrics port, open to every pod,
still answers it. Widening the zmq rule to every pod lets the same pod in: the check can fail.
"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.deploy.conftest import NAMESPACE, find, render
from tests.drills import netns
from tests.drills.netns import _run
from tests.support.servers import ROOT, Proc, model_server

pytestmark = pytest.mark.integration

Doc = dict[str, Any]
WAIT_S = 1.5  # how long a client waits for a connection or a reply before calling it refused
ATTEMPTS = 3  # TCP connects per source pod

# Runs inside a pod's namespace: TCP connects to the zmq port, GET /readyz on the metrics port, one ZeroMQ
# ping; prints what happened as JSON.
CLIENT = """
import json, socket, sys, time, urllib.request
import zmq
from services import protocol
host, zmq_port, metrics_port, attempts = sys.argv[1], *map(int, sys.argv[2:5])
wait_s = float(sys.argv[5])
def connect():
    started = time.monotonic()
    try:
        socket.create_connection((host, zmq_port), timeout=wait_s).close()
        return "connected", time.monotonic() - started
    except OSError as exc:  # TimeoutError when the SYN is dropped, ConnectionRefusedError on a reset
        return type(exc).__name__, time.monotonic() - started
connects = [connect() for _ in range(attempts)]
try:
    with urllib.request.urlopen(f"http://{host}:{metrics_port}/readyz", timeout=wait_s) as resp:
        metrics = resp.status
except Exception as exc:
    metrics = type(exc).__name__
dealer = zmq.Context.instance().socket(zmq.DEALER)
dealer.linger = 0
dealer.connect(f"tcp://{host}:{zmq_port}")
started = time.monotonic()
ping = protocol.Request(protocol.new_request_id(), protocol.deadline_after_ms(5000), op=protocol.OP_PING)
dealer.send_multipart(protocol.encode_request(ping))
answered = dealer.poll(wait_s * 1000)
answer = protocol.decode_reply(dealer.recv_multipart()).status.value if answered else "no reply"
took = time.monotonic() - started
print(json.dumps({"connects": connects, "metrics": metrics, "ping": answer, "ping_s": took}))
"""


@dataclass
class Pod:
    ns: str
    labels: dict[str, str]
    ip: str
    namespace: str = NAMESPACE  # the Kubernetes namespace, for namespaceSelector


@dataclass
class Cluster:
    """Pods as namespaces, each with a veth to one bridge; all removed by `close()`, whatever happened."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix, self.net = f"10.{netns._free_prefix()}.0", f"zlnet{self.tag}"
        self._ns(self.net)
        _run("ip", "-n", self.net, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.net, "link", "set", "br0", "up")

    def _ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def pod(self, role: str, labels: dict[str, str]) -> Pod:
        made = Pod(f"zl{role}{self.tag}", dict(labels), f"{self.prefix}.{len(self.created) + 1}")
        self._ns(made.ns)
        port = f"zl{self.tag}p{len(self.created)}"  # both ends born in their namespaces: none left behind
        _run("ip", "link", "add", "eth0", "netns", made.ns, "type", "veth", "peer", port, "netns", self.net)
        _run("ip", "-n", self.net, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", made.ns, "addr", "add", f"{made.ip}/24", "dev", "eth0")
        _run("ip", "-n", made.ns, "link", "set", "eth0", "up")
        return made

    def close(self) -> None:
        for name in reversed(self.created):  # a namespace takes its veth ends, and so the pairs, with it
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.created.clear()


@dataclass
class InNamespace(Proc):
    """A server run inside a pod's namespace; readiness is asked there too, on its own loopback."""

    netns: str = ""

    def _ready(self) -> bool:
        ask = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)"
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-c", ask, self.ready_url]
        return subprocess.run(argv, capture_output=True).returncode == 0


def _selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if set(selector) - {"matchLabels"}:  # matchExpressions: not translated, so fail rather than guess
        raise NotImplementedError(f"selector {selector}")
    return (selector.get("matchLabels") or {}).items() <= labels.items()


def allowed(policies: list[Doc], target: Pod, ports: dict[str, int], pods: list[Pod]) -> set[tuple[str, Any]]:
    """(source namespace, (port, protocol) or None for every port) that `policies` let reach `target`."""
    isolating = [
        p for p in policies
        if p["metadata"].get("namespace") == target.namespace
        and _selects(p["spec"]["podSelector"], target.labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]  # fmt: skip
    assert isolating, "no policy isolates the model pod: every source is let in"
    out: set[tuple[str, Any]] = set()
    for policy, rule in ((p, r) for p in isolating for r in p["spec"].get("ingress") or []):
        sources = [pod for pod in pods if pod is not target and _peers_select(rule.get("from"), policy, pod)]
        for entry in rule.get("ports") or [None]:
            port = None  # a rule without ports: every port; a named port: the container port of that name
            if entry is not None:
                if set(entry) - {"port", "protocol"}:
                    raise NotImplementedError(f"port {entry}")  # endPort and the like
                port = (ports.get(entry["port"], entry["port"]), entry.get("protocol", "TCP"))
            out |= {(pod.ns, port) for pod in sources}
    return out


def _peers_select(peers: list[Doc] | None, policy: Doc, pod: Pod) -> bool:
    if not peers:  # no `from`: every source
        return True
    for peer in peers:
        if set(peer) - {"podSelector", "namespaceSelector"}:
            raise NotImplementedError(f"peer {peer}")  # ipBlock: no pod of the release
        in_namespace = (
            pod.namespace == policy["metadata"].get("namespace") if "namespaceSelector" not in peer
            else _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod.namespace})
        )  # fmt: skip
        if in_namespace and _selects(peer.get("podSelector"), pod.labels):
            return True
    return False


def enforce(target: Pod, grants: set[tuple[str, Any]], pods: list[Pod]) -> None:
    """Replace the target's INPUT rules with `grants`, then drop every other new connection."""
    ip = {pod.ns: pod.ip for pod in pods}
    rules = [["-i", "lo"], ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]]
    for source, port in sorted(grants, key=str):
        on_port = [] if port is None else ["-p", port[1].lower(), "--dport", str(port[0])]
        rules.append(["-s", ip[source], *on_port])
    _run("ip", "netns", "exec", target.ns, "iptables", "-F", "INPUT")
    for rule in rules:
        _run("ip", "netns", "exec", target.ns, "iptables", "-A", "INPUT", *rule, "-j", "ACCEPT")
    _run("ip", "netns", "exec", target.ns, "iptables", "-A", "INPUT", "-j", "DROP")


def probe(source: Pod, target: Pod, zmq_port: int, metrics_port: int) -> Doc:
    """What a client in `source` gets from the target's ports (see CLIENT)."""
    args = [target.ip, *map(str, (zmq_port, metrics_port, ATTEMPTS, WAIT_S))]
    argv = ["ip", "netns", "exec", source.ns, sys.executable, "-c", CLIENT, *args]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if (why := netns.available()) is not None:
        pytest.skip(why)
    made = Cluster()
    try:
        try:  # the rules enforce() writes, tried on the bridge's namespace first
            _run("ip", "netns", "exec", made.net, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate",
                 "ESTABLISHED", "-j", "ACCEPT")  # fmt: skip
        except (RuntimeError, OSError) as exc:
            pytest.skip(f"iptables cannot filter inside a namespace here: {exc}")
        yield made
    finally:
        made.close()


def test_only_web_pods_reach_the_zeromq_port(cluster: Cluster, spawn, tmp_path, drill_record) -> None:
    docs = render()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    model_pod = find(docs, "Deployment", "zerolens-model")["spec"]["template"]
    web_labels = find(docs, "Deployment", "zerolens-web")["spec"]["template"]["metadata"]["labels"]
    containers = model_pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}
    zmq_port, metrics_port = ports["zmq"], ports["metrics"]

    model = cluster.pod("model", model_pod["metadata"]["labels"])
    web = cluster.pod("web", web_labels)
    other = cluster.pod("other", model_pod["metadata"]["labels"])  # a second model pod: same release, not web
    pods = [model, web, other]
    grants = allowed(policies, model, ports, pods)
    assert (web.ns, (zmq_port, "TCP")) in grants and (other.ns, (metrics_port, "TCP")) in grants
    assert not {(other.ns, (zmq_port, "TCP")), (other.ns, None)} & grants

    # Negative control: the same translation of a zmq rule open to every pod lets the other pod in.
    widened = copy.deepcopy(policies)
    for rule in (r for p in widened for r in p["spec"].get("ingress") or []):
        if any(ports.get(e["port"], e["port"]) == zmq_port for e in rule.get("ports") or []):
            rule["from"] = [{"podSelector": {}}]
    wide_grants = allowed(widened, model, ports, pods)
    assert (other.ns, (zmq_port, "TCP")) in wide_grants

    enforce(model, grants, pods)
    server = model_server(tmp_path, port=zmq_port, zmq_security="plaintext", health_port=metrics_port)
    server.env["ZEROLENS_HOST"] = "0.0.0.0"  # its own namespace: its pod address and loopback
    server.ready_url, server.ports["health"] = f"http://127.0.0.1:{metrics_port}/readyz", metrics_port
    server.argv = ["ip", "netns", "exec", model.ns, *server.argv]
    spawn(InNamespace(**vars(server), netns=model.ns))

    from_web = probe(web, model, zmq_port, metrics_port)
    from_other = probe(other, model, zmq_port, metrics_port)
    enforce(model, wide_grants, pods)
    widened_other = probe(other, model, zmq_port, metrics_port)

    refused = [s for outcome, s in from_other["connects"] if outcome == "TimeoutError"]
    widened_in = sum(o == "connected" for o, _ in widened_other["connects"])
    drill_record(
        "S2",
        "NetworkPolicy enforced between pod namespaces: only web-labelled pods reach the zmq port",
        rules_accepting=len(grants),
        web_connects=f"{sum(o == 'connected' for o, _ in from_web['connects'])}/{ATTEMPTS}",
        web_ping=from_web["ping"],
        web_ping_ms=round(from_web["ping_s"] * 1000, 1),
        other_connects_refused=f"{len(refused)}/{ATTEMPTS}",
        other_gave_up_after_s=round(max(refused, default=0.0), 2),
        other_ping=from_other["ping"],
        other_metrics_status=from_other["metrics"],
        other_connects_with_widened_policy=f"{widened_in}/{ATTEMPTS}",
    )
    assert [o for o, _ in from_web["connects"]] == ["connected"] * ATTEMPTS and from_web["ping"] == "OK"
    assert [o for o, _ in from_other["connects"]] == ["TimeoutError"] * ATTEMPTS  # dropped, not even reset
    assert from_other["ping"] == "no reply"
    assert from_other["metrics"] == 200  # the other pod is routed to the model: only the zmq port is closed
    assert widened_in == ATTEMPTS and widened_other["ping"] == "OK"
