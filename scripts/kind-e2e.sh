#!/usr/bin/env bash
# `make kind-e2e`: install the chart on a throwaway kind cluster and classify real photos through it.
#
#   kind create cluster → make images → kind load docker-image → helm install -f ci/cpu-kind.yaml → rollout
#   → port-forward the web Service → pytest tests/e2e → helm test → delete the cluster (always; KEEP_CLUSTER=1
#   keeps it for a look).
# Needs docker and kind (the GitHub workflow installs kind); helm and kubectl come from scripts/deploy-tools.sh.
# kind cannot run on the project's development machines: this runs in GitHub Actions.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-zerolens-e2e}
NAMESPACE=zerolens
RELEASE=zerolens
# What `make images` (scripts/images.sh) builds, under the names ci/cpu-kind.yaml uses. kind loads images from
# docker, so build with docker even where podman is installed too (GitHub's runners have both).
export ZEROLENS_ENGINE=${ZEROLENS_ENGINE:-docker}
WEB_IMAGE=${ZEROLENS_WEB_IMAGE:-zerolens/web:dev}
MODEL_IMAGE=${ZEROLENS_MODEL_IMAGE:-zerolens/model}:dev-cpu
LOCAL_PORT=${LOCAL_PORT:-18080}
PYTHON=${PYTHON:-.venv/bin/python}
LOGS=build/kind-e2e  # cluster state after a failure

[[ -x build/tools/bin/helm ]] || scripts/deploy-tools.sh
export PATH="$PWD/build/tools/bin:$PATH"
for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-e2e needs $tool on PATH" >&2; exit 2; }
done
export KUBECONFIG="$PWD/build/kind-e2e.kubeconfig"  # never touch the user's own kubeconfig

forward_pid=
finish() {
  local status=$?
  set +e  # collect what can be collected, and always delete the cluster
  [[ -n $forward_pid ]] && kill "$forward_pid" 2>/dev/null
  if ((status != 0)) && kubectl cluster-info >/dev/null 2>&1; then
    echo "kind-e2e failed: cluster state in $LOGS/"
    mkdir -p "$LOGS"
    kubectl -n "$NAMESPACE" get all,configmap,networkpolicy,pdb -o wide >"$LOGS/objects.txt" 2>&1
    kubectl -n "$NAMESPACE" describe pods >"$LOGS/pods.txt" 2>&1
    kubectl -n "$NAMESPACE" get events --sort-by=.lastTimestamp >"$LOGS/events.txt" 2>&1
    for pod in $(kubectl -n "$NAMESPACE" get pods -o name 2>/dev/null); do
      kubectl -n "$NAMESPACE" logs --all-containers "$pod" >"$LOGS/${pod#pod/}.log" 2>&1
    done
  fi
  if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
    echo "kept cluster $CLUSTER (KUBECONFIG=$KUBECONFIG); delete it with: kind delete cluster --name $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
    rm -f "$KUBECONFIG"
  fi
  exit "$status"
}
trap finish EXIT

echo "--- cluster"
kind create cluster --name "$CLUSTER" --wait 120s

echo "--- images"
make images
kind load docker-image --name "$CLUSTER" "$WEB_IMAGE" "$MODEL_IMAGE"

echo "--- install"
helm install "$RELEASE" helm/zerolens --namespace "$NAMESPACE" --create-namespace \
  --values helm/zerolens/ci/cpu-kind.yaml \
  --set "web.image.repository=${WEB_IMAGE%:*},web.image.tag=${WEB_IMAGE##*:}" \
  --set "model.image.repository=${MODEL_IMAGE%:*},model.image.tag=${MODEL_IMAGE##*:}" \
  --wait --timeout 10m
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE-model" --timeout 5m
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE-web" --timeout 5m

echo "--- photos through the web Service"
kubectl -n "$NAMESPACE" port-forward "service/$RELEASE-web" "$LOCAL_PORT:80" >/dev/null &
forward_pid=$!
url=http://127.0.0.1:$LOCAL_PORT
for _ in $(seq 60); do  # the forward takes a moment; /readyz also waits for a model server's answer
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 1
done
ZEROLENS_E2E_URL=$url "$PYTHON" -m pytest tests/e2e -v -p no:cacheprovider

echo "--- NetworkPolicy: only the release's web pods reach the model's ZeroMQ port"
# kind ≥ 0.24 enforces NetworkPolicy (kindnetd). A probe pod tries a TCP connection to a model pod's port 5576;
# it must succeed with the web pods' labels and fail without them.
probe() {  # probe NAME LABELS: prints the probe pod's final phase (Succeeded: it connected)
  kubectl -n "$NAMESPACE" run "$1" --image="$MODEL_IMAGE" --restart=Never --labels="$2" --command -- \
    python -c "import socket; socket.create_connection(('$RELEASE-model', 5576), timeout=10)" >/dev/null
  local phase=
  for _ in $(seq 90); do
    phase=$(kubectl -n "$NAMESPACE" get pod "$1" -o jsonpath='{.status.phase}')
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 1
  done
  kubectl -n "$NAMESPACE" delete pod "$1" --wait=false >/dev/null
  echo "$phase"
}
web_labels="app.kubernetes.io/name=zerolens,app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=web"
allowed=$(probe np-web "$web_labels")
denied=$(probe np-other "app.kubernetes.io/name=np-probe")
echo "web-labelled probe: $allowed; unlabelled probe: $denied"
[[ $allowed == Succeeded && $denied == Failed ]] || { echo "NetworkPolicy not as expected" >&2; exit 1; }

echo "--- helm test"
helm test "$RELEASE" --namespace "$NAMESPACE" --logs --timeout 5m
echo "kind-e2e passed"
