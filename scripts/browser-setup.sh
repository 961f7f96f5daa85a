#!/usr/bin/env bash
# Debian's chromium for the browser tests (tests/browser): Playwright drives it, and never downloads a
# browser of its own. Idempotent and quiet: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "browser-setup: $CHROMIUM is missing and there is no apt-get; install Chromium there by hand" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "browser-setup: installing chromium needs root (or sudo)" >&2; exit 1; }
  SUDO=(sudo)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "browser-setup: installing chromium with apt-get (once)" >&2
if ! { "${SUDO[@]}" apt-get update -qq &&
       "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "browser-setup: apt-get install chromium failed" >&2
  exit 1
fi
[ -x "$CHROMIUM" ] || { echo "browser-setup: chromium installed but $CHROMIUM is missing" >&2; exit 1; }
