"""The model server's small HTTP port: /livez, /readyz and /metrics for Kubernetes and Prometheus.

The probes answer JSON, as the web tier's do: /livez `{"status": "alive"}`; /readyz `{"status": "ready",
"model": NAME}` (200) or `{"status": "not ready", "reason": "..."}` (503). Kubernetes reads only the status.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

# (healthy, detail): the reason when not; when ready, the model's name (liveness's detail is not shown)
Probe = Callable[[], tuple[bool, str]]
JSON = "application/json"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HealthServer:
    """Serves the probes on a daemon thread; `live` and `ready` are asked on every request."""

    def __init__(self, host: str, port: int, live: Probe, ready: Probe, registry: CollectorRegistry) -> None:
        handler = _handler(live, ready, registry)
        server_cls = _Server
        if ":" in host:  # an IPv6 literal such as "::" (dual-stack on Linux)
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self._httpd = server_cls((host, port), handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(live: Probe, ready: Probe, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path in ("/livez", "/readyz"):
                ok, detail = (live if path == "/livez" else ready)()
                self._send(200 if ok else 503, JSON, _probe_body(path, ok, detail))
            elif path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(registry))
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /livez, /readyz or /metrics\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: keep quiet
            log.debug("health %s", format % args)

    return Handler


def _probe_body(path: str, ok: bool, detail: str) -> bytes:
    """A probe's JSON answer: its status, and the model (ready) or the reason (not ready, not alive)."""
    if path == "/livez":
        body = {"status": "alive"} if ok else {"status": "not alive", "reason": detail}
    else:
        body = {"status": "ready", "model": detail} if ok else {"status": "not ready", "reason": detail}
    return (json.dumps(body) + "\n").encode()
