#!/usr/bin/env bash
# Offline checks of everything that deploys zerolens: the Helm chart, k8s/, the Dockerfiles, the CI workflow.
# Needs the tools from scripts/deploy-tools.sh. Prints one line per check and exits non-zero if any failed.
#
#   helm lint --strict and helm template     defaults and every helm/zerolens/ci/*.yaml
#   kubectl kustomize                        k8s/overlays/*
#   kubernetes-validate --strict             every render, against Kubernetes 1.27 and the newest it ships
#                                            (without the operators' kinds, which it has no schema for)
#   scripts/operator_objects.py check        ServiceMonitors, PrometheusRules, ScaledObjects and the Grafana
#                                            dashboard against the operators' CRD models; their PromQL parsed
#   promtool check rules                     the PrometheusRules' groups, as Prometheus would load them
#   bad values                               helm template must fail, with the message a user needs
#   checkov                                  chart (helm), k8s/ (kustomize), Dockerfile.* (if present)
#   hadolint, actionlint, yamllint, shellcheck
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

CHART=helm/zerolens
TOOLS=build/tools
OUT=build/deploy-check  # renders and reports, for a look after a failure
MIN_KUBE=1.27.0         # oldest Kubernetes the chart supports (Chart.yaml kubeVersion)

if [[ ! -x $TOOLS/bin/helm || ! -x $TOOLS/venv/bin/checkov || ! -x $TOOLS/bin/promtool || ! -x $TOOLS/crd-venv/bin/python ]]; then
  echo "deploy tools missing in $TOOLS: run scripts/deploy-tools.sh first" >&2
  exit 2
fi
export PATH="$PWD/$TOOLS/bin:$PWD/$TOOLS/venv/bin:$PATH"  # checkov's helm and kustomize frameworks call them
# helm (and checkov's helm template) render into this namespace, as helm install -n would.
export HELM_NAMESPACE=zerolens
rm -rf "$OUT" && mkdir -p "$OUT"

start=$SECONDS
failures=()
step() {  # step NAME COMMAND...: run it quietly; print ok, or FAIL and its output
  local name=$1 log
  shift
  log=$OUT/$(printf '%s' "$name" | tr -c 'A-Za-z0-9._-' '_').log
  if "$@" >"$log" 2>&1; then
    echo "ok    $name"
    sed -n 's/^scanned: /        /p' "$log"  # checkov's counts: proof that it scanned something
  else
    echo "FAIL  $name"
    sed 's/^/      /' "$log"
    failures+=("$name")
  fi
}

to_file() {  # to_file FILE COMMAND...: COMMAND's output into FILE
  local file=$1
  shift
  "$@" >"$file"
}

NEWEST_KUBE=$("$TOOLS/venv/bin/python" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')

# The chart ----------------------------------------------------------------------------------------------------
value_files() {  # value_files LABEL: sets $values to the -f argument for a ci/ file, none for "defaults"
  values=()
  [[ $1 == defaults ]] || values=(--values "$CHART/ci/$1.yaml")
}
value_sets=(defaults)
for file in "$CHART"/ci/*.yaml; do value_sets+=("$(basename "$file" .yaml)"); done
renders=()
chart_renders=()
for label in "${value_sets[@]}"; do
  value_files "$label"
  step "helm lint --strict ($label)" helm lint --strict "$CHART" "${values[@]}"
  step "helm template ($label)" \
    to_file "$OUT/chart-$label.yaml" helm template zerolens "$CHART" "${values[@]}"
  renders+=("$OUT/chart-$label.yaml")
  chart_renders+=("$OUT/chart-$label.yaml")
done

# The plain manifests --------------------------------------------------------------------------------------------
for overlay in k8s/overlays/*/; do
  label=$(basename "$overlay")
  step "kubectl kustomize ($label)" to_file "$OUT/k8s-$label.yaml" kubectl kustomize "$overlay"
  renders+=("$OUT/k8s-$label.yaml")
done

# The Prometheus Operator's and KEDA's kinds (ci/monitoring*.yaml) are checked against their own schemas below;
# kubernetes-validate would only warn that it has none and pass them.
OPERATORS=("$TOOLS/crd-venv/bin/python" scripts/operator_objects.py)
core_renders=()
for render in "${renders[@]}"; do
  core=${render%.yaml}.core.yaml
  "${OPERATORS[@]}" core "$render" >"$core" || { echo "FAIL  split $render"; failures+=("split $render"); }
  core_renders+=("$core")
done
for kube in "$MIN_KUBE" "$NEWEST_KUBE"; do
  step "kubernetes-validate --strict $kube (${#core_renders[@]} renders)" \
    kubernetes-validate --strict --quiet --kubernetes-version "$kube" "${core_renders[@]}"
done

# Monitoring and autoscaling objects ---------------------------------------------------------------------------
check_rules() {  # check_rules RENDER...: each render's PrometheusRules as one rule file, loaded by promtool
  local render files=()
  for render in "$@"; do
    "${OPERATORS[@]}" rules "$render" >"${render%.yaml}.rules.yaml" || return 1
    files+=("${render%.yaml}.rules.yaml")
  done
  promtool check rules "${files[@]}"
}
step "operator schemas (${#chart_renders[@]} renders)" "${OPERATORS[@]}" check "${chart_renders[@]}"
step "promtool check rules (${#chart_renders[@]} renders)" check_rules "${chart_renders[@]}"

# Bad values (schema and _validate.tpl) are refused with the message that fixes them: tests/deploy/test_chart.py
# and tests/deploy/test_settings.py check each one.

# checkov ---------------------------------------------------------------------------------------------------------
# checkov exits 0 having scanned nothing when a framework's tool (helm, kustomize) is missing or the render
# writes to stderr: each run also writes a JSON report, and the check fails unless it counted resources.
checkov_scan() {  # checkov_scan LABEL CHECKOV-ARGS...
  local report=$OUT/checkov-$1.json
  shift
  checkov --config-file .checkov.yaml -o cli -o json --output-file-path "console,$report" "$@" || return 1
  python3 - "$report" <<'EOF'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("checkov wrote no report: it scanned nothing")
for result in data if isinstance(data, list) else [data]:
    summary = result["summary"]
    print(f"scanned: {result['check_type']}: {summary['resource_count']} resources, {summary['passed']} passed, "
          f"{summary['failed']} failed, {summary['skipped']} skipped in place")
    if not summary["resource_count"] or not summary["passed"]:
        sys.exit(f"checkov {result['check_type']} scanned no resources")
EOF
}
# minimal.yaml turns the NetworkPolicies and PDBs off on purpose: it is linted and validated above, not held to
# checkov.
for label in defaults cpu-kind gpu ingress-tls monitoring; do
  value_files "$label"
  step "checkov helm ($label)" checkov_scan "helm-$label" -d "$CHART" --framework helm "${values[@]/--values/--var-file}"
done
step "checkov kustomize (k8s/)" checkov_scan kustomize -d k8s --framework kustomize

# The Dockerfiles, where they exist --------------------------------------------------------------------------------
for dockerfile in Dockerfile.web Dockerfile.model; do
  [[ -f $dockerfile ]] || { echo "skip  $dockerfile (not there)"; continue; }
  step "hadolint $dockerfile" hadolint "$dockerfile"
  step "checkov dockerfile $dockerfile" checkov_scan "$dockerfile" -f "$dockerfile" --framework dockerfile
done

# CI workflow, YAML and shell ------------------------------------------------------------------------------------
step "actionlint" actionlint -shellcheck "$TOOLS/venv/bin/shellcheck" .github/workflows/*.yaml
step "yamllint" yamllint --strict -d "{extends: default, rules: {line-length: {max: 120},
  document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1},
  comments-indentation: disable, indentation: {indent-sequences: whatever}}}" \
  "$CHART/values.yaml" "$CHART/Chart.yaml" "$CHART/ci" k8s .github .checkov.yaml
step "shellcheck" shellcheck scripts/*.sh

echo "deploy checks: ${#failures[@]} failed in $((SECONDS - start)) s (renders and reports in $OUT/)"
((${#failures[@]} == 0))
