"""gunicorn settings for the web tier: `gunicorn -c services/web/gunicorn.conf.py` serves create_app()."""

from __future__ import annotations

import atexit
import ctypes
import errno
import glob
import os
import shutil
import socket
import sys
import tempfile

from services import decode_budget, keys, logs, tracing
from services.config import PROMETHEUS_MULTIPROC_ENV, ConfigError, WebConfig, load

# Fail at start on a bad ZEROLENS_* setting or missing CurveZMQ keys, before any worker forks, in one line.
# The keys are read here once; the workers inherit them.
try:
    _cfg = load(WebConfig)
    keys.client_keys(_cfg)
except ConfigError as exc:
    sys.exit(f"bad configuration: {exc}")


def _reuse_freed_memory(mmap_threshold: int = 16 << 20, trim_threshold: int = 32 << 20) -> None:
    """Serve big buffers (uploads, decoded photos) from the heap instead of fresh mmap()s (glibc only).

    Each upload allocates and frees buffers of 0.1-2 MB; above glibc's mmap threshold every one is a new
    mapping that page-faults in as it is touched, a measurable share of the web tier's CPU (figures in
    docs/performance.md). Set before the workers fork, so they inherit it. Memory stays bounded by the trim
    threshold.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): keep the defaults
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, mmap_threshold)
    mallopt(m_trim_threshold, trim_threshold)


_reuse_freed_memory()
_MULTIPROC_ENV = PROMETHEUS_MULTIPROC_ENV
_created: list[str] = []  # metrics directories this config made (and removes on exit)

wsgi_app = "services.web:create_app()"
bind = _cfg.web_bind

# gthread, with each request read by the worker's event loop before a thread gets it (services/web/front.py):
# a slow or stalled client holds a socket, never a thread, so no proxy in front is needed for that. Each
# worker serves `threads` requests at once; each thread keeps its own ZeroMQ socket (see clients.py).
worker_class = "services.web.front.BufferingThreadWorker"
workers = _cfg.web_workers  # about one per core (docs/performance.md compares shapes)
threads = _cfg.web_threads

# A request waits at most request_timeout_ms for the model; give it that plus slack on every path, so
# neither the worker watchdog nor a graceful stop (SIGTERM, rolling update) cuts an answer short.
_request_timeout_s = _cfg.request_timeout_ms / 1000
timeout = max(30, int(_request_timeout_s) + 10)
graceful_timeout = max(30, int(_request_timeout_s) + 5)
keepalive = _cfg.web_keepalive_s

# The request head: a longer request line is answered 414, more or longer header fields 431 (gunicorn's
# plain-text answers). gunicorn's defaults, stated here because they bound the head a connection may hold
# in memory (line + fields × field size, ~0.8 MB; front.py reads up to that) and 0 would mean no limit.
# Our URLs are short; 8 KB per field leaves room for cookies of other apps on the domain and proxy headers.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# Trust X-Forwarded-* (scheme, client address) only from these proxies.
forwarded_allow_ips = _cfg.forwarded_allow_ips

# Logs go to stdout for the container runtime, gunicorn's and the app's alike, as console lines or one JSON
# object per line (log_format; services/logs.py). %(M)s is the request time in milliseconds; every response
# carries X-Request-ID (services/web/correlation.py), so the access line names the request too.
accesslog = "-"
errorlog = "-"
loglevel = _cfg.web_log_level
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s" rid=%({x-request-id}o)s'
logconfig_dict = logs.gunicorn_config(_cfg.log_format, loglevel)

# gunicorn ≥ 25's control socket (for gunicornc) would be created under $HOME: not used, and $HOME may be
# read-only in a container. Older gunicorn ignores the unknown setting.
control_socket_disable = True

# Worker heartbeat files: tmpfs where there is one, so a read-only root filesystem works and a slow disk
# cannot make the master think a worker hung.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"


def _refuse_busy_address(server) -> None:
    """Exit in one line when the port is taken, instead of gunicorn's five tries over five seconds."""
    if server.cfg.reuse_port or os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS"):
        return  # sharing the port on purpose, or listening on sockets handed over (re-exec, systemd)
    for address in server.cfg.address:
        if not isinstance(address, tuple) or not address[1]:
            continue  # a unix socket, or any free port
        host, port = address[:2]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    sys.exit(
                        f"port {port} is in use; stop what holds it or choose another (ZEROLENS_WEB_BIND)"
                    )
                sys.exit(f"cannot listen on {host}:{port} (ZEROLENS_WEB_BIND): {exc.strerror}")


def _remove_created(master_pid: int) -> None:
    if os.getpid() == master_pid:  # workers inherit this exit handler; the directory is the master's
        for path in _created:
            shutil.rmtree(path, ignore_errors=True)


def on_starting(server) -> None:
    """Give prometheus-client a fresh directory for per-worker samples before any worker starts."""
    _refuse_busy_address(server)
    # Set in the master before the fork, so every worker's prometheus-client starts in multiprocess mode.
    path = os.environ.get(_MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):  # samples of a previous run would be summed in
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="zerolens-prometheus-")
        os.environ[_MULTIPROC_ENV] = path
        _created.append(path)
        # on_exit removes it; this, should gunicorn exit without calling on_exit (it cannot bind after all)
        atexit.register(_remove_created, os.getpid())
    server.log.info("prometheus multiprocess directory: %s", path)


def post_fork(server, worker) -> None:
    """Start exporting spans in each worker, when otlp_endpoint is set: the SDK's export thread does not
    survive a fork, so the master never makes one. Give the worker its own decode budget: the app is not
    preloaded, each worker builds it and decodes in its own memory."""
    tracing.setup("zerolens-web", _cfg.otlp_endpoint)
    decode_budget.configure(_cfg.decode_memory_bytes)


def worker_exit(server, worker) -> None:
    """Send the worker's buffered spans before it exits."""
    tracing.shutdown()


def child_exit(server, worker) -> None:
    """Tell prometheus-client a worker died so its live gauges stop counting (counters are kept)."""
    from prometheus_client import multiprocess  # imported here: the master must not pick its mode early

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics directory this config created."""
    _remove_created(os.getpid())
