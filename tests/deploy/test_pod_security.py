"""S2: every pod the chart and the kustomize overlays render meets the Pod Security Standards' "restricted"
profile (kubernetes.io/docs/concepts/security/pod-security-standards), checked rule by rule, and the
NetworkPolicy lets only the release's web pods reach the model's ZeroMQ port."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.conftest import CI_VALUES, find, kustomize, pod_specs, render

Doc = dict[str, Any]

BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def violations(pod: Doc) -> list[str]:
    """Every rule of the baseline and restricted profiles that `pod` (a pod spec) breaks."""
    out: list[str] = []
    psc = pod.get("securityContext", {})
    containers = [
        *pod.get("containers", []), *pod.get("initContainers", []), *pod.get("ephemeralContainers", [])
    ]  # fmt: skip
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{key} is set")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod: hostProcess")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)}")
    for sysctl in psc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl['name']}")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser 0")
    if pod_seccomp == "Unconfined":
        out.append("pod: seccomp Unconfined")
    for c in containers:
        name, sc = c["name"], c.get("securityContext", {})
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{name}: hostProcess")
        if not set(caps.get("add", [])) <= BASELINE_CAPS & {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps.get('add')}")
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: does not drop ALL capabilities")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            out.append(f"{name}: not runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccomp profile {seccomp!r}")
        apparmor = (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault")
        if apparmor not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: AppArmor {apparmor}")
        selinux = {**psc.get("seLinuxOptions", {}), **sc.get("seLinuxOptions", {})}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            out.append(f"{name}: seLinuxOptions {selinux}")
    return out


RENDERINGS = [("chart", None), *(("chart", v) for v in CI_VALUES), ("kustomize", "cpu"), ("kustomize", "gpu")]


@pytest.mark.parametrize(("tool", "variant"), RENDERINGS)
def test_every_rendered_pod_meets_the_restricted_profile(tool: str, variant: str | None) -> None:
    docs = render(values=variant) if tool == "chart" else list(kustomize(variant))
    specs = pod_specs(docs)
    assert specs
    for name, pod in specs:
        assert violations(pod) == [], name


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "Escalation"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "adds"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (
            lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            "seccomp",
        ),
        (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (
            lambda p: p["containers"][0].setdefault("ports", []).append({"containerPort": 1, "hostPort": 80}),
            "hostPort",
        ),
        (lambda p: p.setdefault("initContainers", []).append({"name": "init"}), "init"),
    ],
)
def test_the_check_catches_each_breach(change, rule: str) -> None:
    pod = copy.deepcopy(dict(pod_specs(render())))["Deployment/zerolens-model"]
    pod.setdefault("volumes", [])
    change(pod)
    assert any(rule in v for v in violations(pod)), violations(pod)


def test_only_web_pods_may_reach_the_zeromq_port() -> None:
    docs = render()
    policy = find(docs, "NetworkPolicy", "zerolens-model")
    web_labels = find(docs, "Deployment", "zerolens-web")["spec"]["template"]["metadata"]["labels"]
    model_labels = find(docs, "Deployment", "zerolens-model")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= model_labels.items()
    zmq_rules = [r for r in policy["spec"]["ingress"] if {"port": "zmq", "protocol": "TCP"} in r["ports"]]
    assert len(zmq_rules) == 1
    (source,) = zmq_rules[0]["from"]  # one peer: pods with the web labels, nothing else
    assert (
        set(source) == {"podSelector"} and source["podSelector"]["matchLabels"].items() <= web_labels.items()
    )
    assert source["podSelector"]["matchLabels"] != {}
    assert (
        not source["podSelector"]["matchLabels"].items() <= model_labels.items()
    )  # not every pod of the release
