"""`python -m services.model`: load and warm the model, serve it, drain and exit on SIGTERM.

Exit status 2: a bad setting, a port in use or broken model artifacts, in one log line; 1: a crash or a dead
core thread."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
import time

import zmq

from services import config, decode_budget, keys, logs, tracing
from services.config import ModelConfig
from services.model.health import HealthServer
from services.model.metrics import ServerMetrics
from services.model.runtime import Runtime
from services.model.server import ModelServer

log = logging.getLogger("services.model")


class _Bad(Exception):
    """A start-up failure already logged in one line; the exit status says what kind."""

    def __init__(self, status: int) -> None:
        self.status = status


def _settings() -> tuple[ModelConfig, keys.ServerKeys | None]:
    """The settings and CurveZMQ keys, read before the model so that a mistake fails in a second."""
    try:
        cfg = config.load(ModelConfig)
        curve = keys.load_server_keys(cfg.curve_keys_dir) if cfg.zmq_security == "curve" else None
    except config.ConfigError as exc:
        log.error("bad configuration: %s", exc)
        raise _Bad(2) from None
    return cfg, curve


def _load_model(cfg: ModelConfig, metrics: ServerMetrics) -> Runtime:
    from services.model.runtime import ModelError, load_runtime, warm_up  # imports TFLite or TF

    started = time.monotonic()
    try:
        runtime = load_runtime(cfg)
        warm_up(runtime, cfg.batch_sizes())
    except ModelError as exc:
        # As for a bad setting: one line naming the file and the fix, exit 2 (a restart cannot fix it).
        # Anything else is a bug and keeps its traceback and exit 1.
        log.error("model artifacts: %s", " ".join(str(exc).split()))
        raise _Bad(2) from None
    metrics.info.info({"name": cfg.model_name, "runtime": cfg.model_runtime})
    log.info("model %s (%s) loaded and warmed in %.1f s", cfg.model_name, cfg.model_runtime,
             time.monotonic() - started)  # fmt: skip
    return runtime


def _serve_until(stop: threading.Event, server: ModelServer, cfg: ModelConfig) -> int:
    """Serve until SIGTERM (0) or a dead core thread (1), then drain."""
    status = 0
    while not stop.wait(0.5):
        alive, reason = server.liveness()
        if not alive:
            log.error("%s; exiting so the orchestrator restarts us", reason)
            status = 1
            break
    log.info("stopping: draining for up to %.0f s", cfg.drain_timeout_s)
    server.stop(cfg.drain_timeout_s)
    return status


def _log_bind_error(setting: str, host: str, port: int, code: int | None, reason: str | None) -> None:
    """One line naming the port and the setting that moves it: a port in use is the usual case."""
    if code == errno.EADDRINUSE:
        log.error(
            "port %d is in use; stop what holds it or choose another (ZEROLENS_%s)", port, setting.upper()
        )
    else:
        log.error("cannot listen on %s:%d (ZEROLENS_%s): %s", host, port, setting.upper(), reason)


def main() -> int:
    # Console lines until the settings are read: a bad setting may be log_format itself.
    logs.configure("console")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    metrics = ServerMetrics()
    server: ModelServer | None = None

    def live() -> tuple[bool, str]:
        return server.liveness() if server else (True, "loading the model")

    def ready() -> tuple[bool, str]:
        return server.readiness() if server else (False, "loading and warming up the model")

    try:
        cfg, curve = _settings()
    except _Bad as bad:
        return bad.status
    logs.configure(cfg.log_format, cfg.model_log_level.upper())
    decode_budget.configure(cfg.decode_memory_bytes)  # shared by the decoder threads (decode_threads)
    tracing.setup("zerolens-model", cfg.otlp_endpoint)  # before the pipeline, which asks whether it is on
    # The health port comes up first, so a slow model load shows as "not ready", not "dead".
    try:
        health = HealthServer(cfg.host, cfg.health_port, live, ready, metrics.registry).start()
    except OSError as exc:
        _log_bind_error("health_port", cfg.host, cfg.health_port, exc.errno, exc.strerror)
        tracing.shutdown()
        return 2
    log.info("health on port %d (/livez, /readyz, /metrics)", health.port)
    try:
        runtime = _load_model(cfg, metrics)
        if stop.is_set():
            return 0
        server = ModelServer(cfg, runtime, metrics, curve)
        try:
            server.start()
        except zmq.ZMQError as exc:
            _log_bind_error("port", cfg.host, cfg.port, exc.errno, exc.strerror)
            return 2
        except Exception as exc:
            log.error("cannot start: %s", exc)
            return 1
        return _serve_until(stop, server, cfg)
    except _Bad as bad:
        return bad.status
    finally:
        health.stop()
        tracing.shutdown()  # the spans still buffered
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
