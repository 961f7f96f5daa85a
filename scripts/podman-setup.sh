#!/usr/bin/env bash
# Make this machine able to build and run the zerolens images with podman, with no image registry.
# Idempotent: every step checks first and skips what is already in place (a second run takes ~1 s).
#
#   1. apt-get install podman buildah runc fuse-overlayfs uidmap slirp4netns debootstrap netavark
#      aardvark-dns catatonit iptables (only the missing ones).
#   2. build/podman/containers.conf: runc (crun fails on this host's hybrid cgroup v1 layout), default
#      ulimits below the host's hard limits, netavark networks (aardvark-dns: containers on one network
#      find each other by name). Use it with: export CONTAINERS_CONF=$PWD/build/podman/containers.conf
#   3. localhost/debian:bookworm-slim: a Debian minbase root filesystem from debootstrap, imported.
#   4. docker.io/library/python:3.11-slim: Python 3.11 on that base, so an unchanged `FROM python:3.11-slim`
#      in Dockerfile.web / Dockerfile.model builds offline. It also trusts this host's extra CA certificates
#      (/usr/local/share/ca-certificates/*.crt): the usual "corporate TLS proxy / private mirror" setup,
#      which lets pip inside a build reach the package index the host reaches. The Dockerfiles stay clean.
#
# Where a registry is reachable, skip steps 3-4 (ZEROLENS_LOCAL_BASE=0) and let podman pull the real
# python:3.11-slim (pinned by digest in production). Options: --refresh rebuilds both base images.
# Needs root (apt, rootful podman). Variables: ZEROLENS_LOCAL_BASE (1), DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR,
# DEBIAN_SUITE.
set -euo pipefail
cd "$(dirname "$0")/.."

CONF_DIR=build/podman
DEBIAN_IMAGE=localhost/debian:bookworm-slim
PYTHON_IMAGE=docker.io/library/python:3.11-slim
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
RECIPE=4  # bump when the python layer below changes, so existing machines rebuild it
refresh=0
for arg in "$@"; do
  case $arg in
    --refresh) refresh=1 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[podman-setup %3ds] %s\n' "$SECONDS" "$*"; }

if [[ $(id -u) != 0 ]]; then
  echo "podman-setup.sh needs root (apt-get, rootful podman, network namespaces)" >&2
  exit 1
fi

# 1. Packages -----------------------------------------------------------------------------------------
# netavark + aardvark-dns: networks with name resolution (netavark runs iptables, which is no dependency of
# it); catatonit: the pause image of pods (kube play).
packages=(podman buildah runc fuse-overlayfs uidmap slirp4netns debootstrap netavark aardvark-dns catatonit
  iptables)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. containers.conf ----------------------------------------------------------------------------------
mkdir -p "$CONF_DIR"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
# podman's defaults (nofile 1048576) exceed this host's hard limits and runc then refuses to start.
[[ $nofile == unlimited || $nofile -gt 20000 ]] && nofile=20000
[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
conf=$(cat <<EOF
# Written by scripts/podman-setup.sh. Use: export CONTAINERS_CONF=\$PWD/$CONF_DIR/containers.conf
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
EOF
)
if [[ ! -f $CONF_DIR/containers.conf || $(<"$CONF_DIR/containers.conf") != "$conf" ]]; then
  printf '%s\n' "$conf" >"$CONF_DIR/containers.conf"
  log "wrote $CONF_DIR/containers.conf"
fi
export CONTAINERS_CONF=$PWD/$CONF_DIR/containers.conf

if [[ ${ZEROLENS_LOCAL_BASE:-1} == 0 ]]; then
  log "ZEROLENS_LOCAL_BASE=0: base images come from the registry"
  exit 0
fi

# 3. Debian base --------------------------------------------------------------------------------------
if ((refresh)) || ! podman image exists "$DEBIAN_IMAGE"; then
  log "debootstrap $DEBIAN_SUITE (minbase) from $DEBIAN_MIRROR"
  rootfs=$(mktemp -d /var/tmp/zerolens-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$CONF_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$CONF_DIR/debootstrap.log" >&2; exit 1; }
  # Slim it like the official -slim images: no package lists, caches, docs or man pages.
  # (The dpkg excludes are those of the official debian:*-slim images, so later apt installs stay slim too.)
  printf 'path-exclude %s\n' '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*' \
    '/usr/share/groff/*' '/usr/share/linda/*' '/usr/share/lintian/*' >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
  printf 'path-include %s\n' '/usr/share/doc/*/copyright' '/usr/share/locale/locale.alias' \
    >>"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
  find "$rootfs"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/99slim"
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' "$DEBIAN_MIRROR" "$DEBIAN_SUITE" \
    "$DEBIAN_MIRROR" "$DEBIAN_SUITE" "$DEBIAN_SECURITY_MIRROR" "$DEBIAN_SUITE" >"$rootfs/etc/apt/sources.list"
  tar -C "$rootfs" -c . | podman import --quiet \
    --change 'CMD ["bash"]' --change "LABEL org.zerolens.base=debootstrap-$DEBIAN_SUITE" \
    - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "imported $DEBIAN_IMAGE"
  refresh=1  # the python layer must be rebuilt on the new base
fi

# 4. Python layer -------------------------------------------------------------------------------------
ctx=$CONF_DIR/python-base
rm -rf "$ctx"
mkdir -p "$ctx/ca-certificates"
shopt -s nullglob
cas=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob
((${#cas[@]})) && cp "${cas[@]}" "$ctx/ca-certificates/"
stamp=$( (echo "recipe $RECIPE"; podman image inspect --format '{{.Id}}' "$DEBIAN_IMAGE"; \
          cat "$ctx"/ca-certificates/*.crt 2>/dev/null) | sha256sum | cut -c1-16)
current=$(podman image inspect --format '{{index .Labels "org.zerolens.base"}}' "$PYTHON_IMAGE" 2>/dev/null || true)
if ((refresh)) || [[ $current != "python-$stamp" ]]; then
  if [[ -n $current && $current != python-* ]]; then
    log "$PYTHON_IMAGE exists and is not ours (label '$current'): leaving it alone"
    exit 0
  fi
  # Like the official image: python, pip and venv on PATH; the CA bundle for OpenSSL and pip (pip 23
  # vendors certifi and would ignore the system store without PIP_CERT).
  cat >"$ctx/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
 && update-ca-certificates \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /opt/python \\
 && /opt/python/bin/python -m pip --version
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8 \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
LABEL org.zerolens.base=python-$stamp
CMD ["python3"]
EOF
  log "building $PYTHON_IMAGE (python3 + venv + ${#cas[@]} extra CA certificate(s)) on $DEBIAN_IMAGE"
  # Host network for apt: a build network would put a bridge with a private range in the root namespace.
  old=$(podman image inspect --format '{{.Id}}' "$PYTHON_IMAGE" 2>/dev/null || true)
  podman build --network host --pull=never -t "$PYTHON_IMAGE" "$ctx" >"$CONF_DIR/python-base.log" 2>&1 \
    || { tail -30 "$CONF_DIR/python-base.log" >&2; exit 1; }
  # The previous python layer, now untagged (kept while images built on it still exist).
  [[ -n $old && $old != $(podman image inspect --format '{{.Id}}' "$PYTHON_IMAGE") ]] \
    && podman rmi "$old" >/dev/null 2>&1 || true
fi
log "ready: $(podman run --rm --network none "$PYTHON_IMAGE" python --version) in $PYTHON_IMAGE"
