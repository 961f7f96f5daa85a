"""The model tier's autoscaler (a KEDA ScaledObject or an HPA on prometheus-adapter's external metrics): what
the chart renders, and what its queries give when Prometheus evaluates them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    KEDA,
    MODEL,
    NAMESPACE,
    PROMTOOL,
    ROOT,
    WEB,
    exported_metrics,
    find,
    model_hpa,
    operator_check,
    render,
    tool,
    unknown_metrics,
)

GPU = ("--set", "model.gpu.enabled=true", "--set", "model.runtime=keras")


@pytest.mark.parametrize("kind", ["keda", "hpa"])
@pytest.mark.parametrize("gpu", [False, True])
def test_autoscaling_leaves_the_model_replicas_to_the_autoscaler(kind: str, gpu: bool) -> None:
    docs = render(*KEDA, "--set", f"model.autoscaling.kind={kind}", *(GPU if gpu else ()))
    deployment = find(docs, "Deployment", MODEL)
    assert "replicas" not in deployment["spec"]
    assert find(docs, "Deployment", WEB)["spec"]["replicas"] == 2
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == gpu
    if kind == "keda":
        scaled = find(docs, "ScaledObject", MODEL)["spec"]
        target, low, high = scaled["scaleTargetRef"], scaled["minReplicaCount"], scaled["maxReplicaCount"]
        behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert not model_hpa(docs)
    else:
        hpa = model_hpa(docs)[0]["spec"]
        target, low, high, behavior = (
            hpa["scaleTargetRef"],
            hpa["minReplicas"],
            hpa["maxReplicas"],
            hpa["behavior"],
        )
        assert not [d for d in docs if d["kind"] == "ScaledObject"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": MODEL}
    assert (low, high) == (2, 8) and behavior["scaleDown"]["stabilizationWindowSeconds"] == 300


@pytest.mark.parametrize(("metric", "metric_type", "threshold"), [
    ("inFlight", "AverageValue", "16"), ("queueTime", "Value", "0.1"),
])  # fmt: skip
def test_keda_trigger_queries_prometheus_for_the_chosen_signal(
    metric: str, metric_type: str, threshold: str
) -> None:
    docs = render(
        *KEDA,
        "--set",
        f"model.autoscaling.metric={metric}",
        "--set",
        "model.autoscaling.keda.authenticationRef=prom",
    )
    (trigger,) = find(docs, "ScaledObject", MODEL)["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == metric_type
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"
    assert trigger["metadata"]["threshold"] == threshold
    assert f'namespace="{NAMESPACE}",service="{MODEL}"' in trigger["metadata"]["query"]
    assert trigger["authenticationRef"] == {"name": "prom"}


def test_hpa_reads_the_external_metrics_the_documented_adapter_rules_serve(tmp_path: Path) -> None:
    served, queries = set(), []
    for rule in adapter_rules()[0]["rules"]["external"]:  # the same in every source
        series = re.match(r"([a-z_:]+)\{", rule["seriesQuery"])[1]
        assert series in exported_metrics()
        naming = rule["name"]
        served.add(re.sub(naming["matches"], naming["as"].replace("${1}", r"\1"), series))
        query = rule["metricsQuery"].replace("<<.Series>>", series)
        queries.append(query.replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",service="{MODEL}"'))
    # The adapter's queries are PromQL once its templates are filled in: checked as recording rules.
    check = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "adapter"},
        "spec": {
            "groups": [{"name": "adapter", "rules": [{"record": "adapter", "expr": q} for q in queries]}]
        },
    }
    status, output, reports = operator_check([check], tmp_path)
    assert status == 0 and not unknown_metrics(reports), output
    assert served == {"zerolens_model_in_flight", "zerolens_model_queue_seconds_p95"}
    for metric in ("inFlight", "queueTime"):
        args = ("--set", "model.autoscaling.kind=hpa", "--set", f"model.autoscaling.metric={metric}")
        (spec,) = model_hpa(render(*KEDA, *args))[0]["spec"]["metrics"]
        assert spec["type"] == "External" and spec["external"]["metric"]["name"] in served
        assert spec["external"]["metric"]["selector"] == {"matchLabels": {"service": MODEL}}


def adapter_rules() -> list[dict]:
    """The prometheus-adapter rules as values.yaml, docs/monitoring.md and the README give them, all equal."""
    values = (CHART / "values.yaml").read_text()
    block = re.search(r"^ *##   rules:\n((?: *##     .*\n)+)", values, re.M)
    assert block, "values.yaml: no prometheus-adapter rules above model.autoscaling"
    found = [yaml.safe_load("rules:\n" + re.sub(r"^ *##   ", "", block[1], flags=re.M))]
    for doc in (ROOT / "docs" / "monitoring.md", ROOT / "README.md"):
        fenced = [b for b in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S) if "seriesQuery" in b]
        assert len(fenced) == 1, f"{doc.name}: expected one block of prometheus-adapter rules"
        found.append(yaml.safe_load(fenced[0]))
    assert all(rules == found[0] for rules in found), "the prometheus-adapter rules differ between the docs"
    return found


AUTOSCALER_TESTS = """
rule_files: []
evaluation_interval: 1m
tests:
  # Two pods of the release hold 10 and 20 requests (another namespace's pod is not ours); every request
  # waited 0.05-0.1 s, so the p95 is 0.05 + 0.95 x 0.05.
  - interval: 1m
    input_series:
      - {series: 'zerolens_model_in_flight{MODEL,pod="a"}', values: 10x10}
      - {series: 'zerolens_model_in_flight{MODEL,pod="b"}', values: 20x10}
      - {series: 'zerolens_model_in_flight{namespace="other",service="SERVICE",pod="c"}', values: 99x10}
      - {series: 'zerolens_model_queue_seconds_bucket{MODEL,pod="a",le="0.05"}', values: 0x10}
      - {series: 'zerolens_model_queue_seconds_bucket{MODEL,pod="a",le="0.1"}', values: 0+60x10}
      - {series: 'zerolens_model_queue_seconds_bucket{MODEL,pod="a",le="+Inf"}', values: 0+60x10}
    promql_expr_test:
      - {expr: 'IN_FLIGHT', eval_time: 5m, exp_samples: [{labels: '{}', value: 30}]}
      - {expr: 'QUEUE_TIME', eval_time: 5m, exp_samples: [{labels: '{}', value: 0.0975}]}
  # No traffic: no in-flight series at all, and a queue-time histogram that does not move (NaN quantile).
  - interval: 1m
    input_series:
      - {series: 'zerolens_model_queue_seconds_bucket{MODEL,pod="a",le="+Inf"}', values: 5x10}
    promql_expr_test:
      - {expr: 'IN_FLIGHT', eval_time: 5m, exp_samples: [{labels: '{}', value: 0}]}
      - {expr: 'QUEUE_TIME', eval_time: 5m, exp_samples: [{labels: '{}', value: 0}]}
"""


def test_autoscaler_queries_give_the_intended_numbers(tmp_path: Path) -> None:
    """The KEDA queries, evaluated by promtool on made-up series: in flight sums this release's pods only, and
    both answer 0 rather than nothing (or NaN) when there is no traffic."""
    queries = {}
    for metric in ("inFlight", "queueTime"):
        (trigger,) = find(
            render(*KEDA, "--set", f"model.autoscaling.metric={metric}"), "ScaledObject", MODEL
        )["spec"]["triggers"]
        queries[metric] = trigger["metadata"]["query"]
    tests = AUTOSCALER_TESTS.replace("IN_FLIGHT", queries["inFlight"]).replace(
        "QUEUE_TIME", queries["queueTime"]
    )
    tests = tests.replace("MODEL,", f'namespace="{NAMESPACE}",service="{MODEL}",').replace("SERVICE", MODEL)
    path = tmp_path / "autoscaler.test.yaml"
    path.write_text(tests)
    done = tool(PROMTOOL, "test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
