#!/usr/bin/env bash
# `make run`: the model server and the web tier in the foreground, on this machine only (127.0.0.1), with one
# line once it is ready to use. Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops both; either one exiting
# stops the other, and the script then exits non-zero.
set -euo pipefail
BIN=${BIN:-.venv/bin}

# Ports: WEB_PORT, MODEL_PORT and HEALTH_PORT (`make run WEB_PORT=8100`) win over the ZEROLENS_* settings
# they stand for (ZEROLENS_WEB_BIND, ZEROLENS_PORT, ZEROLENS_HEALTH_PORT), which work on their own too.
for var in WEB_PORT MODEL_PORT HEALTH_PORT; do
  if [[ -n ${!var:-} && ! ${!var} =~ ^[0-9]+$ ]]; then
    echo "zerolens: $var=${!var} is not a port number" >&2
    exit 2
  fi
done
if [[ -n ${WEB_PORT:-} ]]; then export ZEROLENS_WEB_BIND=127.0.0.1:$WEB_PORT; fi
if [[ -n ${MODEL_PORT:-} ]]; then export ZEROLENS_PORT=$MODEL_PORT ZEROLENS_MODEL_SERVER=127.0.0.1:$MODEL_PORT; fi
if [[ -n ${HEALTH_PORT:-} ]]; then export ZEROLENS_HEALTH_PORT=$HEALTH_PORT; fi
export ZEROLENS_WEB_BIND=${ZEROLENS_WEB_BIND:-127.0.0.1:8000}
export ZEROLENS_MODEL_SERVER=${ZEROLENS_MODEL_SERVER:-127.0.0.1:${ZEROLENS_PORT:-5576}}
# The model server's ZeroMQ and health ports on loopback only: nothing else on the network needs them here.
export ZEROLENS_HOST=${ZEROLENS_HOST:-127.0.0.1}
export ZEROLENS_MODEL_DIR=${ZEROLENS_MODEL_DIR:-${MODEL_DIR:-build/models/efficientnet_lite0}}
# CurveZMQ between the two, with keys generated once into build/curve (0600; kept across runs).
export ZEROLENS_CURVE_KEYS_DIR=${ZEROLENS_CURVE_KEYS_DIR:-build/curve}
# TensorFlow's own start-up notices and warnings; its errors still show.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# A busy port is one line naming it, before anything starts (and so nothing to clean up).
"$BIN/python" scripts/runcheck.py ports || exit
if [[ ${ZEROLENS_ZMQ_SECURITY:-curve} == curve && ! -f $ZEROLENS_CURVE_KEYS_DIR/server.secret ]]; then
  "$BIN/python" -m services.keys "$ZEROLENS_CURVE_KEYS_DIR" >/dev/null
fi

# On Linux each child also gets SIGTERM when this script dies, even by SIGKILL: no server outlives it.
orphan_guard=()
if command -v setpriv >/dev/null && setpriv --pdeathsig TERM true 2>/dev/null; then
  orphan_guard=(setpriv --pdeathsig TERM --)
fi

model_pid='' web_pid='' ready_pid='' timer_pid='' metrics_dir=''

# Stop what is still running, SIGTERM first (each drains: the model server up to drain_timeout_s); a second
# Ctrl-C or SIGTERM while that runs kills them at once.
stop() {
  set +e
  local pid
  if [[ -n $timer_pid ]]; then kill "$timer_pid" 2>/dev/null; fi  # SIGTERM: bash reports no line for it
  running=()
  for pid in "$ready_pid" "$web_pid" "$model_pid"; do
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then running+=("$pid"); fi
  done
  if ((${#running[@]} == 0)); then
    remove_metrics_dir
    return 0
  fi
  trap 'kill -KILL "${running[@]}" 2>/dev/null; pkill -KILL -P "$web_pid" 2>/dev/null' INT TERM HUP
  echo "zerolens: stopping (Ctrl-C again to force)" >&2
  kill -TERM "${running[@]}" 2>/dev/null
  for pid in "${running[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
  done
  running=()
  remove_metrics_dir
}

remove_metrics_dir() {
  if [[ -n $metrics_dir ]]; then rm -rf "$metrics_dir"; fi
}

# shellcheck disable=SC2329  # called by the traps below
on_signal() {  # $1: the exit status that reports the signal (128 + its number)
  trap '' INT TERM HUP
  stop
  exit "$1"
}
# Set before anything starts, so that no signal can leave a server behind. make forwards SIGTERM to this
# script (the recipe execs it); Ctrl-C reaches every process of the foreground group, the servers too.
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP
trap stop EXIT

# The web workers' metrics directory: made and removed here, so that it goes even when gunicorn itself
# crashes (only a SIGKILL to this script leaves it behind, in $TMPDIR).
metrics_dir=$(mktemp -d "${TMPDIR:-/tmp}/zerolens-prometheus-XXXXXXXX")

"${orphan_guard[@]}" "$BIN/python" -m services.model &
model_pid=$!
PROMETHEUS_MULTIPROC_DIR=$metrics_dir "${orphan_guard[@]}" \
  "$BIN/gunicorn" -c services/web/gunicorn.conf.py 'services.web:create_app()' &
web_pid=$!
# Prints "zerolens is ready: open http://localhost:8000" once the web tier's /readyz answers 200.
"${orphan_guard[@]}" "$BIN/python" scripts/runcheck.py ready &
ready_pid=$!

# Whichever server exits first (a crash, a busy port, a kill) takes the other down with it. `wait -n` alone
# could wait forever: bash reports a background job killed by a signal while it was not inside that wait
# ("Killed") and forgets it. So each pass checks that both still run, a timer ends the wait every few
# seconds in case one died just before it, and `wait PID` (which still knows a forgotten job) gives the status.
while kill -0 "$model_pid" 2>/dev/null && kill -0 "$web_pid" 2>/dev/null; do
  "${orphan_guard[@]}" sleep 5 &
  timer_pid=$!
  wait -n "$model_pid" "$web_pid" "$timer_pid" || true
done
status=0
if kill -0 "$web_pid" 2>/dev/null; then
  wait "$model_pid" || status=$?
  echo "zerolens: the model server exited with status $status; stopping the web tier" >&2
else
  wait "$web_pid" || status=$?
  echo "zerolens: the web tier exited with status $status; stopping the model server" >&2
fi
stop
exit $((status == 0 ? 1 : status))
