#!/usr/bin/env bash
# Build the zerolens container images and print their sizes and build times.
#
#   scripts/images.sh                 zerolens/web:dev and zerolens/model:dev-cpu
#   scripts/images.sh --gpu           also zerolens/model:dev-gpu (tensorflow[and-cuda]: ~7 GB)
#   scripts/images.sh web             only the web image (targets: web, model, gpu)
#   scripts/images.sh --no-cache ...  rebuild every layer
#
# Engine: podman if installed, else docker with a running daemon (ZEROLENS_ENGINE=docker|podman overrides).
# With podman on a machine without a registry, run scripts/podman-setup.sh first (base image, containers.conf).
# Layers are cached: dependencies are installed from pyproject.toml alone and the code is copied after them,
# so a rebuild after a code change takes seconds; the model artifact is rebuilt only when its converter changes.
#
# pip inside the builds uses this host's pip settings (`pip config list`: index URLs and their credentials,
# timeouts, ...), handed to the build as the secret "pip.conf": mounted for the pip steps only, never stored
# in a layer. Settings naming local paths (file:// indexes, find-links directories, constraint files) are
# left out: a container cannot see them, and bind-mounting them would leave their mount points in the images;
# serve such a mirror over HTTP(S) instead. CA certificates are not passed either: the base image trusts them
# (scripts/podman-setup.sh), as a base image used behind a TLS-inspecting proxy must.
# ZEROLENS_PIP_CONF=FILE passes that pip.conf instead; ZEROLENS_PIP_CONF=none passes none (pip's defaults).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=build/images
TAG_WEB=${ZEROLENS_WEB_IMAGE:-zerolens/web:dev}
TAG_MODEL=${ZEROLENS_MODEL_IMAGE:-zerolens/model}  # :dev-cpu, :dev-gpu
targets=()
gpu=0
extra=()
for arg in "$@"; do
  case $arg in
    --gpu) gpu=1 ;;
    --no-cache) extra+=(--no-cache) ;;
    web | model | gpu) targets+=("$arg") ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
((${#targets[@]})) || targets=(web model)
((gpu)) && targets+=(gpu)

engine=${ZEROLENS_ENGINE:-}
if [[ -z $engine ]]; then
  if command -v podman >/dev/null; then engine=podman
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  else
    echo "no podman, and no docker with a running daemon: run scripts/podman-setup.sh (Debian, root)" >&2
    exit 1
  fi
fi
if [[ $engine == podman && -z ${CONTAINERS_CONF:-} && -f build/podman/containers.conf ]]; then
  export CONTAINERS_CONF=$PWD/build/podman/containers.conf
fi
mkdir -p "$OUT"

# The host's pip settings as one pip.conf (mode 600: it may hold index credentials).
args=()
pip_conf=${ZEROLENS_PIP_CONF:-}
if [[ $pip_conf != none ]]; then
  if [[ -z $pip_conf ]]; then
    pip_conf=$OUT/pip.conf
    (umask 077 && python3 - "$pip_conf" <<'PY'
"""`pip config list` (files, then PIP_* variables, which pip ranks higher) as one pip.conf."""
import configparser, subprocess, sys

try:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, check=True).stdout.splitlines()
except (OSError, subprocess.CalledProcessError):
    listing = []  # no pip on the host: the build uses pip's defaults (pypi.org)
files, env = {}, {}
for line in listing:
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    value = value.strip().strip("'\"")
    if section == ":env:":
        env[("global", name)] = value
    else:
        files[(section, name)] = value
config = configparser.ConfigParser(interpolation=None)
for (section, name), value in {**files, **env}.items():
    if name in ("cert", "client-cert"):
        continue  # host paths; the image's own trust store (with the host's extra CAs) is used
    kept = [t for t in value.split() if not t.startswith(("/", "file:", "~", "."))]  # drop local paths
    if kept:
        if not config.has_section(section):
            config.add_section(section)
        config[section][name] = " ".join(kept)
with open(sys.argv[1], "w") as fh:
    config.write(fh)
PY
    )
  fi
  args+=(--secret "id=pip.conf,src=$pip_conf")
fi

# Build steps use the host network: a build network would add a bridge with a private range to the root
# network namespace. --format docker keeps HEALTHCHECK (the OCI image format has no such field).
if [[ $engine == podman ]]; then
  args+=(--format docker --layers --network host)
else
  export DOCKER_BUILDKIT=1  # RUN --mount needs BuildKit
  args+=(--network host)
fi

human() { awk -v b="$1" 'BEGIN { printf (b >= 1e9 ? "%.2f GB" : "%.0f MB"), (b >= 1e9 ? b / 1e9 : b / 1e6) }'; }
summary=()
build() {  # build NAME TAG DOCKERFILE [build args...]
  local name=$1 tag=$2 file=$3 start=$SECONDS log=$OUT/$1.log
  shift 3
  echo "[images] $name: $engine build -f $file -t $tag (log: $log)"
  if ! "$engine" build "${args[@]}" "${extra[@]}" -f "$file" -t "$tag" "$@" . >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "[images] $name: build FAILED after $((SECONDS - start)) s (full log: $log)" >&2
    exit 1
  fi
  local size
  size=$("$engine" image inspect --format '{{.Size}}' "$tag")
  summary+=("$(printf '%-26s %9s %5d s' "$tag" "$(human "$size")" $((SECONDS - start)))")
  echo "[images] ${summary[-1]}"
}

for target in "${targets[@]}"; do
  case $target in
    web) build web "$TAG_WEB" Dockerfile.web ;;
    model) build model "$TAG_MODEL:dev-cpu" Dockerfile.model --build-arg VARIANT=cpu ;;
    gpu) build model-gpu "$TAG_MODEL:dev-gpu" Dockerfile.model --build-arg VARIANT=gpu \
           --build-arg MODEL_RUNTIME=keras ;;
  esac
done
echo "[images] done in ${SECONDS} s ($engine):"
printf '  %s\n' "${summary[@]}"
