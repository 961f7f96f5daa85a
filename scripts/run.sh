#!/usr/bin/env bash
# `make run`: the model server and the web tier in the foreground; Ctrl-C stops both cleanly.
set -euo pipefail
BIN=${BIN:-.venv/bin}
WEB_PORT=${WEB_PORT:-8000}
export ZEROLENS_MODEL_DIR=${ZEROLENS_MODEL_DIR:-${MODEL_DIR:-build/models/efficientnet_lite0}}
export ZEROLENS_MODEL_SERVER=${ZEROLENS_MODEL_SERVER:-127.0.0.1:${ZEROLENS_PORT:-5576}}
export ZEROLENS_WEB_BIND=${ZEROLENS_WEB_BIND:-127.0.0.1:${WEB_PORT}}
# The model server's ZeroMQ and health ports on loopback only: nothing else on the network needs them here.
export ZEROLENS_HOST=${ZEROLENS_HOST:-127.0.0.1}
# CurveZMQ between the two, with keys generated once into build/curve (0600; kept across runs).
export ZEROLENS_CURVE_KEYS_DIR=${ZEROLENS_CURVE_KEYS_DIR:-build/curve}
if [[ ${ZEROLENS_ZMQ_SECURITY:-curve} == curve && ! -f $ZEROLENS_CURVE_KEYS_DIR/server.secret ]]; then
  "$BIN/python" -m services.keys "$ZEROLENS_CURVE_KEYS_DIR" >/dev/null
fi

"$BIN/python" -m services.model &
model_pid=$!
"$BIN/gunicorn" -c services/web/gunicorn.conf.py 'services.web:create_app()' &
web_pid=$!

stop() {
  trap - INT TERM
  echo "stopping web ($web_pid) and model server ($model_pid)"
  kill -TERM "$web_pid" "$model_pid" 2>/dev/null || true
  wait "$web_pid" "$model_pid" 2>/dev/null || true
}
trap stop INT TERM EXIT

echo "zerolens: http://localhost:${WEB_PORT}  (model server metrics: http://localhost:${ZEROLENS_HEALTH_PORT:-8081}/metrics)"
# Whichever exits first (a crash, or Ctrl-C) takes the other down with it.
wait -n "$model_pid" "$web_pid" || true
