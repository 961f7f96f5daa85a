"""Each request's id and trace: the caller's or new, bound to its log lines and echoed in X-Request-ID."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, request

from services import logs, protocol, tracing

HEADER = "X-Request-ID"
# Probes and scrapes arrive every few seconds from every replica's kubelet and Prometheus: as traces they
# would bury the requests worth looking at. They still get a request id.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def request_id() -> str:
    """This request's id: the caller's X-Request-ID when it is safe to log and pass on, else a new one."""
    return g.request_id


def _begin() -> None:
    """Take the caller's id (or make one) and bind it to the log lines; open the server span if tracing."""
    given = request.headers.get(HEADER, "")
    # The same pattern the protocol's header.id allows: joining logs across tiers needs it passed on as it is.
    g.request_id = given if protocol.REQUEST_ID.fullmatch(given) else protocol.new_request_id()
    g.log_token = logs.current_request_id.set(g.request_id)
    if tracing.tracer() is not None and request.path not in UNTRACED_PATHS:
        g.server_span = _server_span()


def _server_span() -> tuple[Any, object]:
    """The request's server span, a child of the caller's traceparent if it sent one, made current."""
    route = request.url_rule.rule if request.url_rule is not None else None
    attributes = {
        "http.request.method": request.method,
        "url.path": request.path,
        "zerolens.request_id": g.request_id,
    }
    if route is not None:
        attributes["http.route"] = route
    name = f"{request.method} {route}" if route else request.method  # low cardinality: never the raw path
    span = tracing.start_span(name, kind="server", carrier=request.headers, attributes=attributes)
    return span, tracing.activate(span)


def _echo(response: Response) -> Response:
    """Every response names its request's id, error pages included, so a user can quote it."""
    rid = g.get("request_id")
    if rid is not None:
        response.headers[HEADER] = rid
    if "server_span" in g:
        g.server_status = response.status_code
    return response


def _end(exc: BaseException | None = None) -> None:
    """Unbind the id (the thread serves other requests next) and end the server span."""
    token = g.pop("log_token", None)
    if token is not None:
        logs.current_request_id.reset(token)
    opened = g.pop("server_span", None)
    if opened is None:
        return
    span, activated = opened
    tracing.deactivate(activated)
    status = g.pop("server_status", 500)
    error = repr(exc) if exc is not None else (f"HTTP {status}" if status >= 500 else None)
    tracing.end_span(span, error, {"http.response.status_code": status})


def init_app(app: Flask) -> None:
    """Register the hooks; first, so that everything after them logs with the id."""
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    app.after_request(_echo)
    app.teardown_request(_end)
