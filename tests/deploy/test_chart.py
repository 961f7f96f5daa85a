"""The rendered Helm chart: what the services need from Kubernetes, checked against their own code."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from services import config, keys
from services.web import discovery
from tests.deploy.conftest import (
    CHART,
    CI_VALUES,
    ROOT,
    container,
    env,
    find,
    helm_template_error,
    pod_specs,
    render,
)

ALL_VALUES = [None, *CI_VALUES]  # None: the chart's defaults
WEB, MODEL = "zerolens-web", "zerolens-model"


def routes(path: str, pattern: str) -> set[str]:
    """The URL paths a service serves, read from its source so that renaming a route breaks these tests."""
    found = set(re.findall(pattern, (ROOT / path).read_text()))
    assert found, f"no routes found in {path}"
    return found


def image_env(dockerfile: str) -> dict[str, str]:
    """The ZEROLENS_* variables a Dockerfile's ENV instructions bake into its image ({} without one)."""
    path = ROOT / dockerfile
    if not path.exists():
        return {}
    text = path.read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            found.update(re.findall(r"(ZEROLENS_[A-Z_]+)=(\S+)", line))
    return found


def image_config(dockerfile: str, tmp_path: Path) -> dict[str, str]:
    """The image's own defaults file (ZEROLENS_IMAGE_CONFIG), as its `printf` writes it for the CPU build."""
    baked = image_env(dockerfile)
    if config.IMAGE_CONFIG_ENV not in baked:
        return {}
    written = re.search(r"printf '([^']*)'", (ROOT / dockerfile).read_text())
    assert written, f"{dockerfile} names {config.IMAGE_CONFIG_ENV} but writes no file"
    path = tmp_path / "image.yaml"
    path.write_text(written[1].replace("\\n", "\n") % "tflite")
    return {config.IMAGE_CONFIG_ENV: str(path)}


WEB_ROUTES = routes("services/web/views.py", r'@bp\.get\("(/[^"]*)"\)')
MODEL_ROUTES = routes("services/model/health.py", r'"(/[a-z]+)"')


def settings_file(docs: list[dict], name: str, key: str) -> dict:
    """The YAML settings file a ConfigMap holds under `key`."""
    return yaml.safe_load(find(docs, "ConfigMap", name)["data"][key])


def load_as_service(cls: type, docs: list[dict], tmp_path: Path, name: str, key: str):
    """Load the rendered settings as the container would: the file via ZEROLENS_CONFIG, under the pod's env,
    under the image's ENV defaults."""
    path = tmp_path / key
    path.write_text(find(docs, "ConfigMap", name)["data"][key])
    c = container(docs, name)
    mounted = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["config"]
    environ = env(c)
    assert environ["ZEROLENS_CONFIG"] == f"{mounted}/{key}", "ZEROLENS_CONFIG must name the mounted file"
    baked = image_config(f"Dockerfile.{key.split('.')[0]}", tmp_path)
    return config.load(cls, environ={**baked, **environ, "ZEROLENS_CONFIG": str(path)})


@pytest.mark.parametrize("values", ALL_VALUES)
def test_model_service_is_headless_with_the_zmq_port(values: str | None) -> None:
    docs = render(values=values)
    service = find(docs, "Service", MODEL)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["zmq"]["port"] == config.ModelConfig.port == 5576
    assert ports["zmq"]["targetPort"] == "zmq"
    pod_labels = find(docs, "Deployment", MODEL)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "model"


@pytest.mark.parametrize("values", ALL_VALUES)
def test_gpu_limit_only_with_gpu_values(values: str | None) -> None:
    docs = render(values=values)
    model = container(docs, MODEL)
    spec = find(docs, "Deployment", MODEL)["spec"]["template"]["spec"]
    gpus = model["resources"]["limits"].get("nvidia.com/gpu")
    if values == "gpu.yaml":
        assert gpus == 1
        assert model["image"].endswith("-gpu")
        assert spec["runtimeClassName"] == "nvidia"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert settings_file(docs, MODEL, "model.yaml")["model_runtime"] == "keras"
    else:
        assert gpus is None
        assert model["image"].endswith("-cpu") or values == "cpu-kind.yaml"
        assert "runtimeClassName" not in spec and "tolerations" not in spec
    for name, pod in pod_specs(docs):  # and never on anything else
        for c in pod["containers"]:
            assert "nvidia.com/gpu" not in str(c["resources"]) or name == f"Deployment/{MODEL}"


@pytest.mark.parametrize("values", ALL_VALUES)
def test_probes_hit_real_routes_on_named_container_ports(values: str | None) -> None:
    docs = render(values=values)
    expected = {
        WEB: (WEB_ROUTES, {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}),
        MODEL: (
            MODEL_ROUTES,
            {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"},
        ),
    }
    for name, (served, probes) in expected.items():
        c = container(docs, name)
        port_names = {p["name"] for p in c["ports"]}
        for probe, path in probes.items():
            http = c[probe]["httpGet"]
            assert http["path"] == path and path in served, f"{name} {probe}: {path} is not served"
            assert http["port"] in port_names, f"{name} {probe}: no container port named {http['port']}"
    assert {p["name"]: p["containerPort"] for p in container(docs, MODEL)["ports"]} == {
        "zmq": 5576,
        "metrics": 8081,
    }
    assert [(p["name"], p["containerPort"]) for p in container(docs, WEB)["ports"]] == [("http", 8000)]


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_container_has_limits_and_the_full_security_context(values: str | None) -> None:
    docs = render(values=values)
    specs = pod_specs(docs)
    assert {name.split("/")[0] for name, _ in specs} == {"Deployment", "Pod"}  # the helm test pod too
    for name, pod in specs:
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][kind].keys(), f"{name}: {kind}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == sc["runAsGroup"] == 10001, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts or name.startswith("Pod/"), f"{name}: /tmp must be writable"
    assert env(container(docs, WEB))["PROMETHEUS_MULTIPROC_DIR"] in {
        m["mountPath"] for m in container(docs, WEB)["volumeMounts"]
    }


@pytest.mark.parametrize("values", ALL_VALUES)
def test_config_keys_are_exactly_the_config_fields(values: str | None) -> None:
    docs = render(values=values)
    web_fields = {f.name for f in dataclasses.fields(config.WebConfig)}
    model_fields = {f.name for f in dataclasses.fields(config.ModelConfig)}
    # model_server is in the environment (ZEROLENS_MODEL_SERVER names the release's Service); host keeps its
    # default, model_dir the image's own unless model.modelDir is set.
    assert set(settings_file(docs, WEB, "web.yaml")) == web_fields - {"model_server"}
    assert set(settings_file(docs, MODEL, "model.yaml")) == model_fields - {"host", "model_dir"}
    with_dir = render("--set", "model.modelDir=/models/lite0", values=values)
    assert settings_file(with_dir, MODEL, "model.yaml")["model_dir"] == "/models/lite0"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.web", "Dockerfile.model"])
def test_images_set_no_setting_in_the_environment(dockerfile: str) -> None:
    # The environment beats the settings file, so a ZEROLENS_<setting> baked into an image would silently
    # override the chart; an image's own defaults go in its ZEROLENS_IMAGE_CONFIG file, below that file.
    assert set(image_env(dockerfile)) <= {config.IMAGE_CONFIG_ENV}


@pytest.mark.parametrize("values", ALL_VALUES)
def test_rendered_settings_load_in_the_services(values: str | None, tmp_path: Path) -> None:
    docs = render(values=values)
    web = load_as_service(config.WebConfig, docs, tmp_path, WEB, "web.yaml")
    model = load_as_service(config.ModelConfig, docs, tmp_path, MODEL, "model.yaml")
    assert discovery.parse(web.model_server)  # create_app() does the same at start
    assert model.port == 5576 and model.health_port == 8081
    assert model.model_runtime == ("keras" if values == "gpu.yaml" else "tflite")
    if image_env("Dockerfile.model"):
        assert model.model_dir == "/opt/zerolens/model"  # the image's own, from its defaults file
    if values == "gpu.yaml":
        assert model.max_batch_size == 32 and model.batch_sizes() == [1, 2, 4, 8, 16, 32]
    if values == "ingress-tls.yaml":
        assert web.max_upload_bytes == model.max_upload_bytes == 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("release", "namespace", "prefix"),
    [("zerolens", "zerolens", "zerolens"), ("prod", "ml", "prod-zerolens")],
)
def test_web_finds_every_model_pod_through_the_headless_service(
    release: str, namespace: str, prefix: str
) -> None:
    docs = render(release=release, namespace=namespace)
    address = env(container(docs, f"{prefix}-web"))["ZEROLENS_MODEL_SERVER"]
    assert address == f"{prefix}-model.{namespace}.svc.cluster.local:5576"
    service = find(docs, "Service", f"{prefix}-model")
    assert service["spec"]["clusterIP"] == "None"
    assert {"name": "zmq", "port": 5576, "targetPort": "zmq", "protocol": "TCP"} in service["spec"]["ports"]


@pytest.mark.parametrize("drain_s", [25, 100])
def test_grace_period_outlasts_prestop_and_drain(drain_s: int) -> None:
    docs = render("--set", f"model.drainTimeoutSeconds={drain_s}")
    spec = find(docs, "Deployment", MODEL)["spec"]["template"]["spec"]
    settings = settings_file(docs, MODEL, "model.yaml")
    pre_stop = int(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert settings["drain_timeout_s"] == drain_s
    assert spec["terminationGracePeriodSeconds"] > pre_stop + settings["drain_timeout_s"]
    # gunicorn's graceful_timeout is max(30, request timeout + 5) s (services/web/gunicorn.conf.py)
    web_spec = find(docs, "Deployment", WEB)["spec"]["template"]["spec"]
    web_pre_stop = int(web_spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful_s = max(30, settings_file(docs, WEB, "web.yaml")["request_timeout_ms"] // 1000 + 5)
    assert web_spec["terminationGracePeriodSeconds"] > web_pre_stop + graceful_s


def checksums(*args: str) -> dict[str, str]:
    docs = render(*args)
    return {
        name: find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        for name in (WEB, MODEL)
    }


def test_checksum_annotation_follows_each_settings_file() -> None:
    default = checksums()
    batch = checksums("--set", "model.batching.maxBatchSize=8")
    top_k = checksums("--set", "web.topK=3")
    upload = checksums("--set", "limits.maxUploadBytes=1048576")
    assert batch[MODEL] != default[MODEL] and batch[WEB] == default[WEB]
    assert top_k[WEB] != default[WEB] and top_k[MODEL] == default[MODEL]
    assert upload[WEB] != default[WEB] and upload[MODEL] != default[MODEL]  # a setting of both tiers
    assert checksums("--set", "web.replicaCount=5") == default  # not a settings change: no roll


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "model.gpu.enabled=true", "--set", "model.runtime=tflite"],
     "model.gpu.enabled requires model.runtime=keras"),
    (["--set", "model.runtime=tf"], 'model.runtime must be one of the following: "tflite", "keras"'),
    (["--set", "web.image.repository="],
     "web.image.repository: String length must be greater than or equal to 1"),
    (["--set", "web.modelClient.attemptTimeoutMs=20000"], "--set web.modelClient.attemptTimeoutMs=10000"),
    (["--set", "model.gpu.enabled=true", "--set", "model.runtime=keras",
      "--set", "model.image.tag=1.2.3-cpu"], "GPU build (--set model.image.tag=1.2.3-gpu)"),
    (["--set", "model.batching.maxBatchSze=8"], "Additional property maxBatchSze is not allowed"),
])  # fmt: skip
def test_bad_values_fail_with_the_fix_in_the_message(args: list[str], expected: str) -> None:
    assert expected in helm_template_error(*args)


@pytest.mark.parametrize(("values", "body_size"), [("ingress-tls.yaml", "11m"), (None, "21m")])
def test_ingress_lets_a_maximal_upload_through_to_the_web_tier(values: str | None, body_size: str) -> None:
    docs = render("--set", "ingress.enabled=true", values=values)
    ingress = find(docs, "Ingress", WEB)
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == body_size
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == WEB and backend["port"]["name"] in {
        p["name"] for p in find(docs, "Service", WEB)["spec"]["ports"]
    }
    if values == "ingress-tls.yaml":
        assert ingress["spec"]["tls"] == [{"secretName": "zerolens-tls", "hosts": [rule["host"]]}]


def test_helm_test_uploads_a_real_photo_shipped_in_the_chart() -> None:
    photo = (CHART / "files" / "coffee.jpg").read_bytes()
    assert len(photo) <= 30 * 1024
    with Image.open(io.BytesIO(photo)) as img:
        assert img.format == "JPEG" and min(img.size) >= 200
    docs = render()
    hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert {d["kind"] for d in hooks} == {"ConfigMap", "Pod"}
    data = find(hooks, "ConfigMap", "zerolens-test-classify")
    assert base64.b64decode(data["binaryData"]["coffee.jpg"]) == photo
    command = find(hooks, "Pod", "zerolens-test-classify")["spec"]["containers"][0]["command"]
    assert command[-1] == "espresso" and command[2] == "http://zerolens-web:80/api/v1/predict?top_k=3"
    assert "/api/v1/predict" in routes("services/web/views.py", r'@bp\.post\("(/[^"]*)"\)')


def test_model_pods_take_zmq_only_from_web_pods() -> None:
    docs = render()
    policy = find(docs, "NetworkPolicy", MODEL)
    zmq_rule, metrics_rule = policy["spec"]["ingress"]
    web_labels = find(docs, "Deployment", WEB)["spec"]["template"]["metadata"]["labels"]
    assert zmq_rule["ports"] == [{"port": "zmq", "protocol": "TCP"}]
    (peer,) = zmq_rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= web_labels.items()
    assert metrics_rule == {"from": [{"podSelector": {}}], "ports": [{"port": "metrics", "protocol": "TCP"}]}
    assert not any(d["kind"] == "NetworkPolicy" for d in render(values="minimal.yaml"))


def curve_mounts(docs: list[dict], name: str) -> tuple[str | None, dict | None]:
    """(secretName of the Deployment's `curve` volume, its `curve` volume mount); None when absent."""
    spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    volume = next((v for v in spec["volumes"] if v["name"] == "curve"), None)
    mount = next((m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "curve"), None)
    return (volume["secret"]["secretName"] if volume else None), mount


def test_generated_curve_keys_are_mounted_read_only_and_both_tiers_agree(tmp_path: Path) -> None:
    docs = render()
    secret = find(docs, "Secret", "zerolens-curve")
    assert set(secret["data"]) == {"server.secret", "client.secret"}
    for name, value in secret["data"].items():
        key = base64.b64decode(value)
        assert re.fullmatch(rb"[A-Za-z0-9]{40}", key), name  # randAlphaNum 40: a valid Z85 secret key
        (tmp_path / name).write_bytes(key)
    for name, key in ((WEB, "web.yaml"), (MODEL, "model.yaml")):
        settings = settings_file(docs, name, key)
        secret_name, mount = curve_mounts(docs, name)
        assert settings["zmq_security"] == "curve" and secret_name == "zerolens-curve"
        assert mount == {"name": "curve", "mountPath": settings["curve_keys_dir"], "readOnly": True}
    server, client = keys.load_server_keys(tmp_path), keys.load_client_keys(tmp_path)
    assert client.server == server.public and server.clients == {client.public}


def test_curve_checksum_rolls_both_tiers_with_the_generated_keys() -> None:
    def annotation(docs: list[dict], name: str) -> str:
        return find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/curve"]

    docs = render()
    assert annotation(docs, WEB) == annotation(docs, MODEL)  # the Secret's keys, once per render
    # Without a cluster (helm template) lookup finds no Secret to keep: every render has new keys.
    again = render("--set", "web.replicaCount=2")
    assert annotation(again, MODEL) != annotation(docs, MODEL)
    assert checksums() == checksums("--set", "web.replicaCount=2")  # the settings' checksum stays put


def test_existing_curve_secrets_are_mounted_and_their_checksum_is_deterministic() -> None:
    args = ("--set", "curve.existingSecret=model-keys", "--set", "curve.webExistingSecret=web-keys")
    docs = render(*args)
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert curve_mounts(docs, MODEL)[0] == "model-keys" and curve_mounts(docs, WEB)[0] == "web-keys"
    same = render(*args, "--set", "web.replicaCount=2")
    for name in (WEB, MODEL):
        metadata = find(docs, "Deployment", name)["spec"]["template"]["metadata"]
        assert (
            metadata["annotations"]["checksum/curve"]
            == (
                find(same, "Deployment", name)["spec"]["template"]["metadata"]["annotations"][
                    "checksum/curve"
                ]
            )
        )


def test_curve_off_is_plaintext_in_both_tiers_and_mounts_no_keys() -> None:
    docs = render("--set", "curve.enabled=false")
    assert not [d for d in docs if d["kind"] == "Secret"]
    for name, key in ((WEB, "web.yaml"), (MODEL, "model.yaml")):
        assert settings_file(docs, name, key)["zmq_security"] == "plaintext"
        assert curve_mounts(docs, name) == (None, None)
        metadata = find(docs, "Deployment", name)["spec"]["template"]["metadata"]
        assert "checksum/curve" not in metadata["annotations"]


def test_a_web_secret_of_its_own_needs_the_model_secret_too() -> None:
    message = helm_template_error("--set", "curve.webExistingSecret=web-keys")
    assert "curve.webExistingSecret (web-keys) needs curve.existingSecret" in message
    assert "--set curve.existingSecret=" in message
