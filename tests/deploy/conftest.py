"""Render the Helm chart and the kustomize overlays with the pinned tools; find objects in the result; check
monitoring objects against the operators' schemas, and their PromQL against the metrics the code exports."""

from __future__ import annotations

import functools
import json
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

CRD_PYTHON = ROOT / "build" / "tools" / "crd-venv" / "bin" / "python"
PROMTOOL = ROOT / "build" / "tools" / "bin" / "promtool"
OPERATOR_OBJECTS = ROOT / "scripts" / "operator_objects.py"
WEB, MODEL = f"{RELEASE}-web", f"{RELEASE}-model"
# Series the rules read that the services do not export themselves.
KUBE_STATE_METRICS = {"kube_pod_container_status_restarts_total"}
SERVICE_MONITOR = ("--set", "metrics.serviceMonitor.enabled=true")
KEDA = (
    *SERVICE_MONITOR,
    "--set", "model.autoscaling.enabled=true",
    "--set", "model.autoscaling.keda.serverAddress=http://prometheus.monitoring.svc:9090",
)  # fmt: skip

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


# Monitoring and autoscaling objects -----------------------------------------------------------------------


def tool(path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a pinned tool from build/tools; a missing one fails the test (these checks must not be skipped)."""
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run scripts/deploy-tools.sh first", pytrace=False)
    return subprocess.run(
        [str(path), *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def operator_check(docs: list[dict], tmp_path: Path, *, as_json: bool = True) -> tuple[int, str, list[dict]]:
    """scripts/operator_objects.py check on `docs`: (exit status, its output, its JSON report or [])."""
    path = tmp_path / "render.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    done = tool(CRD_PYTHON, str(OPERATOR_OBJECTS), "check", *(["--json"] if as_json else []), str(path))
    reports = json.loads(done.stdout) if as_json and done.stdout else []
    return done.returncode, done.stdout + done.stderr, reports


def sample_names(name: str, kind: str) -> set[str]:
    """The sample names prometheus-client writes for a metric family."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }[kind]
    return {name + suffix for suffix in suffixes}


def exported_metrics() -> set[str]:
    """Every sample name the web tier and the model server expose, read from their metric objects."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from services.model.metrics import ServerMetrics
    from services.web import metrics as web_metrics

    collectors = [v for v in vars(web_metrics).values() if isinstance(v, MetricWrapperBase)]
    model = ServerMetrics(CollectorRegistry())
    collectors += [v for v in vars(model).values() if isinstance(v, MetricWrapperBase)]
    names = {n for c in collectors for family in c.describe() for n in sample_names(family.name, family.type)}
    assert {"zerolens_web_http_requests_total", "zerolens_model_in_flight"} <= names  # read them all
    return names


def unknown_metrics(reports: list[dict[str, Any]]) -> dict[str, set[str]]:
    """object → metric names its PromQL reads that nothing exports."""
    known = exported_metrics() | KUBE_STATE_METRICS
    return {r["object"]: set(r["metrics"]) - known for r in reports if set(r["metrics"]) - known}


def model_hpa(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == MODEL]
