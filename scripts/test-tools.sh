#!/usr/bin/env bash
# Debian packages the tests drive (run by `make test`): chromium for the browser tests (Playwright drives it
# and never downloads a browser of its own) and iptables for the network-partition drills (TCP resets inside
# a test's own network namespace). Idempotent and quiet: does nothing when every program is there.
set -euo pipefail

declare -A NEEDED=([/usr/bin/chromium]=chromium [/usr/sbin/iptables]=iptables)
missing=()
for program in "${!NEEDED[@]}"; do
  [ -x "$program" ] || missing+=("${NEEDED[$program]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "test-tools: ${missing[*]} missing and there is no apt-get; install them by hand" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "test-tools: installing ${missing[*]} needs root (or sudo)" >&2; exit 1; }
  SUDO=(sudo)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "test-tools: installing ${missing[*]} with apt-get (once)" >&2
if ! { "${SUDO[@]}" apt-get update -qq &&
       "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "test-tools: apt-get install ${missing[*]} failed" >&2
  exit 1
fi
for program in "${!NEEDED[@]}"; do
  [ -x "$program" ] || { echo "test-tools: ${NEEDED[$program]} installed but $program is missing" >&2; exit 1; }
done
