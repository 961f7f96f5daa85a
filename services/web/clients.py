"""Which model client serves a request: get_client/close_client/init_app.

Shape of flaskr's db.py: the client is opened lazily on first use, so no ZeroMQ object exists before
gunicorn forks its workers (a context inherited across fork asserts, pyzmq issue 1049). Each process
has one context; each gthread request thread owns one ModelClient (one DEALER socket), reused from
request to request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import zmq
from flask import Flask, current_app, g

from services.config import WebConfig
from services.web.model_client import ModelClient

_lock = threading.Lock()
_context: zmq.Context | None = None
_context_pid: int | None = None
_local = threading.local()
# Threads that send the photos of one request at once, so that they reach the model tier together and batch
# there; each has its own client. Per process: made after gunicorn's fork, like the context.
FAN_OUT_THREADS = 16
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None


def _process_context() -> zmq.Context:
    """This process's context, created on first use (after gunicorn's fork) and again in a forked child."""
    global _context, _context_pid
    with _lock:
        if _context is None or _context_pid != os.getpid():
            _context = zmq.Context()  # never reuse (or term) a context inherited across fork
            _context_pid = os.getpid()
        return _context


def thread_client(cfg: WebConfig) -> ModelClient:
    """This thread's client for cfg, created on first use and kept for the thread's next requests."""
    client: ModelClient | None = getattr(_local, "client", None)
    if client is not None and client.cfg == cfg and _local.pid == os.getpid():
        return client
    if client is not None and _local.pid == os.getpid():
        client.close()  # another app config in the same thread (tests): don't leak the old socket
    _local.client = ModelClient(cfg, _process_context())
    _local.pid = os.getpid()
    return _local.client


def fan_out_pool() -> ThreadPoolExecutor:
    """This process's threads for sending several photos of one request at once."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(FAN_OUT_THREADS, thread_name_prefix="fan-out")
            _pool_pid = os.getpid()
        return _pool


ClientFactory = Callable[[WebConfig], object]


def client_factory() -> ClientFactory:
    """How this app makes a thread's model client: the MODEL_CLIENT factory (tests) or thread_client."""
    return current_app.config.get("MODEL_CLIENT") or thread_client


def client_maker() -> Callable[[], ModelClient]:
    """Makes the calling thread's model client for this app; for pool threads, which have no app context."""
    cfg, factory = current_app.config["ZEROLENS"], client_factory()
    return lambda: factory(cfg)  # type: ignore[return-value]


def get_client() -> ModelClient:
    """The model client for this request: the app's MODEL_CLIENT factory (tests) or this thread's client."""
    if "model_client" not in g:
        g.model_client = client_factory()(current_app.config["ZEROLENS"])
    return g.model_client


def close_client(exc: BaseException | None = None) -> None:
    """Release the request's client; after an unexpected error also close its socket (state unknown)."""
    client = g.pop("model_client", None)
    if client is not None and exc is not None and hasattr(client, "close"):
        client.close()


def init_app(app: Flask) -> None:
    """Register the per-request release with the app."""
    app.teardown_appcontext(close_client)
