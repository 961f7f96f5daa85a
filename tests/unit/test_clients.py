"""Which model client serves a request: one per thread, one ZeroMQ context per process (clients.py)."""

from __future__ import annotations

import threading

from services.config import WebConfig, load
from services.web import clients
from services.web.model_client import ModelClient


def test_each_thread_gets_its_own_client_and_the_process_one_context(monkeypatch) -> None:
    monkeypatch.setattr(clients, "_context", None)
    monkeypatch.setattr(clients, "_local", threading.local())
    cfg = load(WebConfig, environ={})
    here = clients.thread_client(cfg)
    assert clients.thread_client(cfg) is here
    seen: list[ModelClient] = []

    def other_thread() -> None:
        seen.append(clients.thread_client(cfg))
        seen[-1].close()  # a socket is closed by the thread that owns it

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert seen[0] is not here and seen[0]._context is here._context
    here.close()
    here._context.term()
