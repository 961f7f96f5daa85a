"""Check the chart's Prometheus Operator, KEDA and Grafana objects offline, against the operators' schemas.

kubernetes-validate knows only Kubernetes's built-in kinds. This runs in build/tools/crd-venv
(scripts/deploy-tools.sh), which holds typed models generated from the operators' CRDs (PyPI
cloudcoil-models-prometheus-operator and cloudcoil-models-keda) and promql-parser (Prometheus's PromQL grammar
and function signatures, in Rust):

  check [--json] RENDER...  validate every monitoring.coreos.com and keda.sh object, and each Grafana
                            dashboard in a ConfigMap; parse every PromQL expression in them; exit 1 naming
                            each fault. --json prints a report instead, with the metric names each reads.
  core RENDER...            the renders without those kinds, for kubernetes-validate (it has no schema
                            for them)
  rules RENDER...           the PrometheusRules' groups as one rule file, for `promtool check rules`

A RENDER is a file of YAML documents (`helm template` output), or - for standard input.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import yaml

OPERATOR_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
# Grafana's own variables stand for durations; a dashboard's variables stand for label values.
_GRAFANA_DURATION = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
_GRAFANA_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.+),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.S)

Doc = dict[str, Any]


def models() -> dict[tuple[str, str], type]:
    """(apiVersion, kind) → the operator's model of it."""
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as prometheus

    return {
        ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus.ServiceMonitor,
        ("monitoring.coreos.com/v1", "PodMonitor"): prometheus.PodMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus.PrometheusRule,
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    }


def documents(paths: list[str]) -> Iterator[tuple[str, Doc]]:
    """(file name, document) of every non-empty YAML document of the renders."""
    for path in paths:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        yield from ((os.path.basename(path), d) for d in yaml.safe_load_all(text) if d)


def is_operator_object(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).startswith(OPERATOR_GROUPS)


def differences(given: Any, kept: Any, path: str = "") -> list[str]:
    """Where the model's reading of an object differs from the object: the models ignore unknown fields and
    coerce types (an int where the CRD wants a string), and the API server's schema would refuse both."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [f"{path}: an object where the schema wants {type(kept).__name__}"]
        out = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(f"{where}: unknown field")
            else:
                out += differences(value, kept[key], where)
        return out
    if isinstance(given, list):
        if not isinstance(kept, list) or len(kept) != len(given):
            return [f"{path}: a list the schema does not take"]
        pairs = enumerate(zip(given, kept, strict=True))
        return [d for i, (g, k) in pairs for d in differences(g, k, f"{path}[{i}]")]
    if type(given) is not type(kept) or given != kept:
        return [f"{path}: {given!r} is read as {kept!r} (wrong type)"]
    return []


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects; raises ValueError when it is not valid PromQL."""
    import promql_parser

    names: set[str] = set()
    equal = promql_parser.MatchOp.Equal

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            by_matcher = (m.value for m in node.matchers.matchers if m.name == "__name__" and m.op == equal)
            names.add(node.name or next(by_matcher, None) or "<no metric name>")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def promql_of(doc: Doc) -> list[tuple[str, str]]:
    """(where, expression) of every PromQL expression an object holds."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    found = []
    if kind == "PrometheusRule":
        for g in spec.get("groups", []):
            for r in g.get("rules", []):
                where = f"group {g.get('name')} {r.get('alert') or r.get('record')}"
                found.append((where, str(r.get("expr", ""))))
    elif kind == "ScaledObject":
        for i, trigger in enumerate(spec.get("triggers", [])):
            if trigger.get("type") == "prometheus":
                found.append((f"trigger {i}", str(trigger.get("metadata", {}).get("query", ""))))
    return found


def dashboard_promql(dashboard: Doc) -> list[tuple[str, str]]:
    """(where, expression) of every query of a Grafana dashboard: panel targets and query variables, with
    Grafana's variables replaced by values of their kind ($__rate_interval by a duration, $x by a label)."""

    def plain(expr: str) -> str:
        return _GRAFANA_VARIABLE.sub("x", _GRAFANA_DURATION.sub("5m", expr))

    found = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))  # rows may hold their panels
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((f"panel {panel.get('title')!r} {target.get('refId')}", plain(target["expr"])))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(query) or _QUERY_RESULT.match(query)
        if match:
            found.append((f"variable {variable.get('name')}", plain(match["expr"])))
    return found


def dashboards(doc: Doc) -> list[tuple[str, Doc | str]]:
    """(data key, dashboard or the reason it is none) of every .json entry of a ConfigMap."""
    out: list[tuple[str, Doc | str]] = []
    for key, text in (doc.get("data") or {}).items():
        if key.endswith(".json"):
            try:
                out.append((key, json.loads(text)))
            except ValueError as exc:
                out.append((key, f"not JSON: {exc}"))
    return out


def check(docs: list[tuple[str, Doc]]) -> list[dict[str, Any]]:
    """One report per operator object and per dashboard ConfigMap: its errors and the metrics it reads."""
    known = models()
    reports = []
    for source, doc in docs:
        meta = doc.get("metadata") or {}
        name = f"{doc.get('kind')}/{meta.get('name')}"
        errors: list[str] = []
        queries: list[tuple[str, str]] = []
        if is_operator_object(doc):
            model = known.get((doc.get("apiVersion"), doc.get("kind")))
            if model is None:
                errors.append(f"no schema for {doc.get('apiVersion')} {doc.get('kind')}")
            else:
                errors += validate(model, doc)
            queries = promql_of(doc)
        elif doc.get("kind") == "ConfigMap" and any(k.endswith(".json") for k in (doc.get("data") or {})):
            for key, dashboard in dashboards(doc):
                if isinstance(dashboard, str):
                    errors.append(f"{key}: {dashboard}")
                elif "panels" in dashboard:
                    queries += [(f"{key} {where}", expr) for where, expr in dashboard_promql(dashboard)]
            if not queries and not errors:
                continue  # JSON, but not a dashboard
        else:
            continue
        metrics: set[str] = set()
        for where, expr in queries:
            try:
                metrics |= metric_names(expr)
            except ValueError as exc:
                errors.append(f"{where}: PromQL does not parse ({exc}): {expr}")
        reports.append(
            {
                "object": name,
                "source": source,
                "errors": errors,
                "metrics": sorted(metrics),
                "queries": len(queries),
            }
        )
    return reports


def validate(model: type, doc: Doc) -> list[str]:
    """The schema's complaints about one object, unknown fields and coerced types included."""
    import pydantic

    try:
        read = model.model_validate(doc)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return differences(doc, read.model_dump(mode="json", by_alias=True, exclude_unset=True))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in {"check", "core", "rules"}:
        sys.stderr.write(__doc__ or "")
        return 2
    command, args = argv[0], argv[1:]
    as_json = command == "check" and "--json" in args
    docs = list(documents([a for a in args if a != "--json"]))
    if command == "core":
        yaml.safe_dump_all([d for _, d in docs if not is_operator_object(d)], sys.stdout, sort_keys=False)
        return 0
    if command == "rules":
        rules = [d for _, d in docs if d.get("kind") == "PrometheusRule"]
        groups = [g for d in rules for g in d["spec"].get("groups", [])]
        yaml.safe_dump({"groups": groups}, sys.stdout, sort_keys=False)
        return 0
    reports = check(docs)
    if as_json:
        json.dump(reports, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for report in reports:
            status = "FAIL" if report["errors"] else "ok  "
            where = f"{report['object']} in {report['source']}"
            print(f"{status}  {where} ({report['queries']} PromQL expressions)")
            for error in report["errors"]:
                print(f"      {error}")
    if not reports:
        print("no Prometheus Operator, KEDA or dashboard object found: nothing was checked", file=sys.stderr)
        return 1
    return 1 if any(r["errors"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
