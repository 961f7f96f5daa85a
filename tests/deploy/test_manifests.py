"""k8s/ (kustomize) against the Helm chart: same objects, names, ports, probes, settings and GPU resources."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from services import config
from tests.deploy.conftest import container, find, kustomize, render

# Labels and annotations only one of the two carries: Helm's bookkeeping and the chart's rollout checksum
# (kustomize rolls pods through the ConfigMap name's content hash instead).
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}
GPU_CHART = ("--set", "model.gpu.enabled=true", "--set", "model.runtime=keras")
CONFIGS = {
    "zerolens-web": ("web.yaml", config.WebConfig),
    "zerolens-model": ("model.yaml", config.ModelConfig),
}


def _strip_hash(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def normalise(doc: dict) -> dict:
    """The object without what legitimately differs between a Helm release and a kustomize build."""
    doc = copy.deepcopy(doc)
    metas = [doc["metadata"]]
    if doc["kind"] == "Deployment":
        metas.append(doc["spec"]["template"]["metadata"])
        for volume in doc["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["name"] = _strip_hash(volume["configMap"]["name"])
        for c in doc["spec"]["template"]["spec"]["containers"]:  # a kustomize patch puts its entries first
            c["env"].sort(key=lambda e: e["name"])
    for meta in metas:
        meta.pop("namespace", None)
        for label in HELM_ONLY_LABELS:
            meta.get("labels", {}).pop(label, None)
        meta.get("annotations", {}).pop("checksum/config", None)
        meta.get("annotations", {}).pop("checksum/curve", None)
        if not meta.get("annotations", True):
            del meta["annotations"]
    if doc["kind"] == "ConfigMap":
        doc["metadata"]["name"] = _strip_hash(doc["metadata"]["name"])
        doc["data"] = {key: yaml.safe_load(text) for key, text in doc["data"].items()}  # comments aside
    return doc


def by_key(docs) -> dict[tuple[str, str], dict]:
    return {(d["kind"], _strip_hash(d["metadata"]["name"])): normalise(d) for d in docs}


def chart_objects(*args: str) -> list[dict]:
    """The chart's release objects, without the `helm test` hooks and the generated CurveZMQ Secret
    (k8s/ users create theirs from `python -m services.keys` files: keys never go into git)."""
    return [
        d
        for d in render(*args)
        if "helm.sh/hook" not in d["metadata"].get("annotations", {}) and d["kind"] != "Secret"
    ]


def settings_file(docs) -> dict:
    """The model server's settings file in a kustomize build."""
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and "model.yaml" in d["data"]]
    return yaml.safe_load(config_map["data"]["model.yaml"])


def test_cpu_overlay_is_the_chart_with_its_defaults() -> None:
    chart, manifests = by_key(chart_objects()), by_key(kustomize("cpu"))
    assert sorted(manifests) == sorted(chart)
    for key, obj in chart.items():
        assert manifests[key] == obj, f"{key[0]}/{key[1]} differs between k8s/overlays/cpu and the chart"


def test_every_object_lands_in_the_zerolens_namespace() -> None:
    for overlay in ("cpu", "gpu"):
        assert {d["metadata"].get("namespace") for d in kustomize(overlay)} == {"zerolens"}


def test_gpu_overlay_matches_the_chart_with_gpu_enabled() -> None:
    chart, manifests = by_key(chart_objects(*GPU_CHART)), by_key(kustomize("gpu"))
    assert sorted(manifests) == sorted(chart)
    for key, obj in chart.items():
        assert manifests[key] == obj, f"{key[0]}/{key[1]} differs between k8s/overlays/gpu and the chart"


def test_gpu_limit_only_in_the_gpu_overlay() -> None:
    cpu = container(kustomize("cpu"), "zerolens-model")
    gpu = container(kustomize("gpu"), "zerolens-model")
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["image"].endswith("-gpu") and cpu["image"].endswith("-cpu")
    settings = {name: settings_file(kustomize(name)) for name in ("cpu", "gpu")}
    assert settings["gpu"]["model_runtime"] == "keras" and settings["cpu"]["model_runtime"] == "tflite"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_config_map_names_carry_a_content_hash(overlay: str) -> None:
    docs = kustomize(overlay)
    for name in CONFIGS:
        generated = find(docs, "ConfigMap", name)["metadata"]["name"]
        assert generated != name and _strip_hash(generated) == name
        volumes = find(docs, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "config", "configMap": {"name": generated}} in volumes
