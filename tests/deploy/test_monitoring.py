"""The chart's monitoring (ServiceMonitors, alerts, dashboard): checked offline against the operators' own
schemas, with promtool, and against the metrics the code exports."""

from __future__ import annotations

import copy
import functools
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    CRD_PYTHON,
    KEDA,
    MODEL,
    NAMESPACE,
    OPERATOR_OBJECTS,
    PROMTOOL,
    RELEASE,
    ROOT,
    SERVICE_MONITOR,
    WEB,
    find,
    helm_template_error,
    model_hpa,
    operator_check,
    render,
    tool,
    unknown_metrics,
)

ALERT_TESTS = Path(__file__).with_name("alerts.test.yaml")
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
MONITORING = ["monitoring.yaml", "monitoring-hpa.yaml"]  # ci/ files: KEDA, and HPA with everything elsewhere
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}


@functools.cache
def checked(values: str) -> tuple[int, str, tuple[dict, ...]]:
    """operator_check on the render of a ci/ file, once per session (the models take seconds to import)."""
    with tempfile.TemporaryDirectory() as tmp:
        status, output, reports = operator_check(render(values=values), Path(tmp))
    return status, output, tuple(reports)


def operator_objects(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in OPERATOR_KINDS]


def dashboard_map(docs: list[dict]) -> list[dict]:
    return [
        d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})
    ]


def rules(docs: list[dict]) -> list[dict]:
    """Every rule of the rendered PrometheusRule."""
    return [r for g in find(docs, "PrometheusRule", RELEASE)["spec"]["groups"] for r in g["rules"]]


# Off by default, and each toggle renders its own objects only -----------------------------------------------


def test_every_monitoring_toggle_is_off_by_default() -> None:
    docs = render()
    assert not operator_objects(docs) and not dashboard_map(docs) and not model_hpa(docs)
    assert find(docs, "Deployment", MODEL)["spec"]["replicas"] == 2


@pytest.mark.parametrize(("base", "toggle", "expected"), [
    ((), SERVICE_MONITOR, {("ServiceMonitor", WEB), ("ServiceMonitor", MODEL)}),
    (SERVICE_MONITOR, ("--set", "metrics.prometheusRule.enabled=true"), {("PrometheusRule", RELEASE)}),
    ((), ("--set", "metrics.grafanaDashboard.enabled=true"), {("ConfigMap", f"{RELEASE}-dashboard")}),
    (SERVICE_MONITOR, KEDA[2:], {("ScaledObject", MODEL)}),
    (SERVICE_MONITOR, (*KEDA[2:], "--set", "model.autoscaling.kind=hpa"),
     {("HorizontalPodAutoscaler", MODEL)}),
])  # fmt: skip
def test_each_toggle_adds_only_its_own_objects(
    base: tuple[str, ...], toggle: tuple[str, ...], expected: set[tuple[str, str]]
) -> None:
    def names(*args: str) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in render(*args)}

    assert names(*base, *toggle) - names(*base) == expected


# The operators' schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", MONITORING)
def test_operator_objects_pass_the_operators_schemas(values: str) -> None:
    docs = render(values=values)
    status, output, reports = checked(values)
    assert status == 0, output
    names = {r["object"] for r in reports}
    expected = {f"{d['kind']}/{d['metadata']['name']}" for d in operator_objects(docs) + dashboard_map(docs)}
    assert names == expected and len(names) >= 4
    assert all(r["queries"] for r in reports if not r["object"].startswith("ServiceMonitor/"))


def _set(path: str, value: Any) -> Any:
    """A mutation: set the `path` ("spec/endpoints/0/interval") of a document to `value`."""

    def mutate(doc: dict) -> None:
        *parents, leaf = path.split("/")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(leaf) if isinstance(node, list) else leaf] = value

    return mutate


BROKEN = [
    ("ServiceMonitor", _set("spec/endpoints/0/interval", "30 seconds"), "spec.endpoints.0.interval"),
    ("ServiceMonitor", _set("spec/endpoints/0/scrapeIntervall", "30s"), "scrapeIntervall: unknown field"),
    ("ServiceMonitor", _set("spec/endpoints/0/relabelings", [{"action": "rename"}]), "action"),
    ("ServiceMonitor", _set("spec/selector", None), "spec.selector"),
    ("ServiceMonitor", _set("kind", "ServiceMonitr"), "no schema for monitoring.coreos.com/v1 ServiceMonitr"),
    ("ScaledObject", _set("spec/triggers/0/metadata/threshold", 16), "threshold"),
    ("ScaledObject", _set("spec/minReplicaCount", "2"), "minReplicaCount: '2' is read as 2"),
    (
        "ScaledObject",
        _set("spec/triggers/0/metadata/query", "sum(zerolens_model_in_flight"),
        "does not parse",
    ),
    ("PrometheusRule", _set("spec/groups/0/rules/0/for", "5 minutes"), "for"),
    ("PrometheusRule", _set("spec/groups/0/rules/0/expr", "rate(zerolens_model_ready)"), "type matrix"),
    ("ConfigMap", _set(f"data/zerolens-{RELEASE}.json", "{not json"), "not JSON"),
]
NAMES = {
    "ServiceMonitor": MODEL,
    "ScaledObject": MODEL,
    "PrometheusRule": RELEASE,
    "ConfigMap": f"{RELEASE}-dashboard",
}


@pytest.fixture(scope="module")
def broken_reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, dict]]:
    """Each object of BROKEN, named broken-<index>, through the checker at once: (status, output, reports)."""
    docs = render(values="monitoring.yaml")
    objects = []
    for i, (kind, mutate, _) in enumerate(BROKEN):
        broken = copy.deepcopy(find(docs, kind, NAMES[kind]))
        broken["metadata"]["name"] = f"broken-{i}"
        mutate(broken)
        objects.append(broken)
    status, output, _ = operator_check(objects, tmp_path_factory.mktemp("broken"), as_json=False)
    reports = operator_check(objects, tmp_path_factory.mktemp("broken-json"))[2]
    return status, output, {r["object"].split("/")[1]: r for r in reports}


@pytest.mark.parametrize("index", range(len(BROKEN)), ids=[f"{k}-{e}" for k, _, e in BROKEN])
def test_the_validator_rejects_a_broken_object(index: int, broken_reports: tuple) -> None:
    status, output, reports = broken_reports
    assert status == 1
    errors = reports[f"broken-{index}"]["errors"]
    assert any(BROKEN[index][2] in e for e in errors), errors
    assert f"FAIL  {reports[f'broken-{index}']['object']} in render.yaml" in output


def test_the_renders_without_operator_kinds_are_left_to_kubernetes_validate() -> None:
    render_file = "\n---\n".join(yaml.safe_dump(d) for d in render(values="monitoring.yaml"))
    core = tool(CRD_PYTHON, str(OPERATOR_OBJECTS), "core", "-", stdin=render_file)
    kinds = {d["kind"] for d in yaml.safe_load_all(core.stdout) if d}
    assert core.returncode == 0 and "Deployment" in kinds and not kinds & OPERATOR_KINDS


# PromQL against the code ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", MONITORING)
def test_promql_reads_only_metrics_the_services_export(values: str) -> None:
    _, _, reports = checked(values)
    assert unknown_metrics(reports) == {}
    read = {m for r in reports for m in r["metrics"]}
    assert {
        "zerolens_model_ready",
        "zerolens_model_queue_seconds_bucket",
        "zerolens_model_batch_size_bucket",
        "zerolens_model_in_flight",
        "zerolens_model_refused_requests_total",
        "zerolens_web_http_requests_total",
        "zerolens_web_http_request_seconds_bucket",
        "zerolens_web_shed_requests_total",
        "kube_pod_container_status_restarts_total",
    } <= read


def test_a_metric_the_code_does_not_export_is_caught(tmp_path: Path) -> None:
    scaled = copy.deepcopy(find(render(*KEDA), "ScaledObject", MODEL))
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    trigger["query"] = trigger["query"].replace("zerolens_model_in_flight", "zerolens_model_inflight")
    status, output, reports = operator_check([scaled], tmp_path)
    assert status == 0, output  # valid PromQL and a valid object ...
    assert unknown_metrics(reports) == {
        f"ScaledObject/{MODEL}": {"zerolens_model_inflight"}
    }  # ... of no metric


def test_error_ratios_count_every_classifying_route_and_no_other(app: Any) -> None:
    docs = render(*SERVICE_MONITOR, "--set", "metrics.prometheusRule.enabled=true")
    expr = next(r["expr"] for r in rules(docs) if r["alert"] == "ZerolensWebServerErrors")
    (pattern,) = set(re.findall(r'route=~"([^"]+)"', expr))
    classify = re.compile(pattern)  # PromQL regexes are anchored, as fullmatch is
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        posts = "POST" in rule.methods
        assert bool(classify.fullmatch(rule.rule)) == posts, f"{rule.rule} ({sorted(rule.methods)})"
    assert classify.fullmatch("/api/v1/predict") and not classify.fullmatch("/readyz")


# The alerts -------------------------------------------------------------------------------------------------


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    alerts = [r for r in rules(render(values="monitoring.yaml")) if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "ZerolensModelNotReady",
        "ZerolensModelServersDown",
        "ZerolensModelQueueTimeHigh",
        "ZerolensWebServerErrors",
        "ZerolensWebShedding",
        "ZerolensPodRestarting",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"].strip(), alert["alert"]
        description = alert["annotations"]["description"]
        assert "Check:" in description and "Fix:" in description, alert["alert"]
        assert f'namespace="{NAMESPACE}"' in alert["expr"], f"{alert['alert']} must select this release"


def test_thresholds_and_extra_rules_come_from_the_values() -> None:
    docs = render(values="monitoring-hpa.yaml")
    rule = find(docs, "PrometheusRule", RELEASE)
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    by_name = {r.get("alert") or r.get("record"): r for r in rules(docs)}
    assert by_name["ZerolensModelQueueTimeHigh"]["expr"].rstrip().endswith("> 0.25")
    assert by_name["zerolens:model_in_flight:sum"]["expr"].startswith("sum by (namespace, service)")
    groups = [g["name"] for g in rule["spec"]["groups"]]
    assert groups == [RELEASE, f"{RELEASE}-extra"]


def promtool_rules(docs: list[dict], tmp_path: Path, *, annotations: bool) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rule file in tmp_path/rules.yaml."""
    groups = copy.deepcopy(find(docs, "PrometheusRule", RELEASE)["spec"]["groups"])
    for group in groups:
        for rule in group["rules"]:
            if not annotations:
                rule.pop("annotations", None)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_prometheus_loads_the_rules_and_their_templates(tmp_path: Path) -> None:
    for values in MONITORING:
        path = promtool_rules(render(values=values), tmp_path, annotations=True)
        done = tool(PROMTOOL, "check", "rules", str(path))
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_alerts_fire_when_and_only_when_their_promtool_tests_expect(tmp_path: Path) -> None:
    promtool_rules(render(values="monitoring.yaml"), tmp_path, annotations=False)
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    done = tool(PROMTOOL, "test", "rules", str(tmp_path / ALERT_TESTS.name))
    assert done.returncode == 0, done.stdout + done.stderr


# The Grafana dashboard --------------------------------------------------------------------------------------


def test_dashboard_file_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    titles = " / ".join(p["title"].lower() for p in panels)
    for topic in ("status", "latency", "queue time", "batch size", "in flight", "ready", "refusals"):
        assert topic in titles


def test_dashboard_config_map_is_one_per_release_for_the_grafana_sidecar() -> None:
    args = ("--set", "metrics.grafanaDashboard.enabled=true")
    (config_map,) = dashboard_map(render(*args))
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = config_map["data"]
    dashboard = json.loads(config_map["data"][key])
    assert dashboard["panels"] == json.loads(DASHBOARD.read_text())["panels"]
    current = {v["name"]: v.get("current", {}).get("value") for v in dashboard["templating"]["list"]}
    assert current == {"datasource": None, "namespace": NAMESPACE, "web": WEB, "model": MODEL}
    (other,) = dashboard_map(render(*args, release="other"))
    other_dashboard = json.loads(next(iter(other["data"].values())))
    assert other_dashboard["uid"] != dashboard["uid"] and len(dashboard["uid"]) <= 40
    (elsewhere,) = dashboard_map(render(values="monitoring-hpa.yaml"))
    assert elsewhere["metadata"]["namespace"] == "monitoring"
    assert elsewhere["metadata"]["annotations"] == {"grafana_folder": "zerolens"}


# ServiceMonitors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", MONITORING)
def test_service_monitors_scrape_each_tiers_metrics_port(values: str) -> None:
    docs = render(values=values)
    served = {WEB: "services/web/views.py", MODEL: "services/model/health.py"}
    for name, source in served.items():
        monitor, service = find(docs, "ServiceMonitor", name), find(docs, "Service", name)
        spec = monitor["spec"]
        assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics" and '"/metrics"' in (ROOT / source).read_text()
        others = [d for d in docs if d["kind"] == "Service" and d is not service]
        assert not any(
            spec["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items() for d in others
        )
    if values == "monitoring-hpa.yaml":
        assert monitor["metadata"]["namespace"] == "monitoring"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "10s"
        assert spec["jobLabel"] == "app.kubernetes.io/component"
        assert endpoint["relabelings"][0]["targetLabel"] == "node"
        assert endpoint["metricRelabelings"][0]["action"] == "drop"


# Bad combinations -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    ((*KEDA, "--set", "model.autoscaling.minReplicas=5", "--set", "model.autoscaling.maxReplicas=2"),
     "--set model.autoscaling.maxReplicas=5"),
    ((*SERVICE_MONITOR, "--set", "model.autoscaling.enabled=true"),
     "--set model.autoscaling.keda.serverAddress=http://"),
    (("--set", "metrics.prometheusRule.enabled=true"), "--set metrics.serviceMonitor.enabled=true"),
    (("--set", "model.autoscaling.enabled=true", "--set", "model.autoscaling.kind=hpa"),
     "model.autoscaling.enabled: the alerts and the model autoscaler read the series"),
    ((*KEDA, "--set", "model.autoscaling.kind=both"),
     'model.autoscaling.kind must be one of the following: "keda", "hpa"'),
    ((*KEDA, "--set", "model.autoscaling.minReplicas=0"),
     "model.autoscaling.minReplicas: Must be greater than or equal to 1"),
    ((*SERVICE_MONITOR, "--set", "metrics.serviceMonitor.interval=30 seconds"),
     "metrics.serviceMonitor.interval"),
    (("--set", "metrics.serviceMonitr.enabled=true"), "Additional property serviceMonitr is not allowed"),
])  # fmt: skip
def test_bad_monitoring_values_fail_with_the_fix_in_the_message(args: tuple[str, ...], expected: str) -> None:
    assert expected in helm_template_error(*args)
