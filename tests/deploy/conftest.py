"""Render the Helm chart and the kustomize overlays with the pinned tools; find objects in the result."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "zerolens"
HELM = ROOT / "build" / "tools" / "bin" / "helm"
KUBECTL = ROOT / "build" / "tools" / "bin" / "kubectl"
CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
RELEASE, NAMESPACE = "zerolens", "zerolens"

Doc = dict[str, Any]


def _run(tool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not tool.exists():  # not a skip: these tests are the chart's only guard in `make test`
        pytest.fail(f"{tool.relative_to(ROOT)} is missing: run scripts/deploy-tools.sh first", pytrace=False)
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=60, check=False)


@functools.cache
def _helm_template(args: tuple[str, ...]) -> tuple[Doc, ...]:
    done = _run(HELM, "template", *args)
    if done.returncode:
        pytest.fail(f"helm template {' '.join(args)} failed:\n{done.stderr}")
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def render(
    *args: str, values: str | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[Doc]:
    """The chart's objects (test hooks included) for `values` (a ci/ file name) and extra helm arguments."""
    extra = ("-f", str(CHART / "ci" / values)) if values else ()
    return list(_helm_template((release, str(CHART), "--namespace", namespace, *extra, *args)))


def helm_template_error(*args: str) -> str:
    """helm template's error output; fails the test if the render succeeds."""
    done = _run(HELM, "template", RELEASE, str(CHART), *args)
    assert done.returncode != 0, f"helm template {' '.join(args)} should have failed"
    return done.stderr


@functools.cache
def kustomize(overlay: str) -> tuple[Doc, ...]:
    """kubectl kustomize k8s/overlays/<overlay>."""
    done = _run(KUBECTL, "kustomize", str(ROOT / "k8s" / "overlays" / overlay))
    if done.returncode:
        pytest.fail(f"kubectl kustomize {overlay} failed:\n{done.stderr}")
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def find(docs: list[Doc] | tuple[Doc, ...], kind: str, name: str) -> Doc:
    """The one object of `kind` named `name` (a ConfigMap name may carry kustomize's hash suffix)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (
            d["metadata"]["name"] == name
            or (kind == "ConfigMap" and d["metadata"]["name"].startswith(name + "-"))
        )
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[Doc] | tuple[Doc, ...]) -> list[tuple[str, Doc]]:
    """(kind/name, pod spec) of every Deployment and Pod."""
    specs = []
    for d in docs:
        if d["kind"] == "Deployment":
            specs.append((f"Deployment/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            specs.append((f"Pod/{d['metadata']['name']}", d["spec"]))
    return specs


def container(docs: list[Doc] | tuple[Doc, ...], deployment: str) -> Doc:
    """The single container of a Deployment."""
    (only,) = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return only


def env(c: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
