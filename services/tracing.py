"""OpenTelemetry spans for both tiers, imported only once an OTLP endpoint is set: off, a None check is all.

Callers test `tracer() is None` before anything else, so with tracing off (the default) no opentelemetry
module is ever loaded and a request pays one comparison. The W3C `traceparent` crosses the ZeroMQ hop in
the protocol header (services/protocol.py), put there and read back with opentelemetry.propagate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider while tracing is on
_tracer: Any = None  # its Tracer; None: tracing is off


def tracer() -> Any:
    """This process's tracer, or None while tracing is off."""
    return _tracer


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector given by its base URL (or by the full URL already)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def setup(service_name: str, endpoint: str) -> None:
    """Export this process's spans to the OTLP/HTTP collector at `endpoint`; nothing when it is empty.

    Call it in the process that makes the spans, after any fork: the batch processor's export thread does
    not survive one (gunicorn's post_fork, the model server's main).
    """
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    install(service_name, BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))


def install(service_name: str, processor: Any) -> Any:
    """Make spans from now on and hand them to `processor` (tests give an in-memory exporter's); the tracer.

    The provider stays this module's own rather than the global one, which can be set once per process.
    The SDK still reads the OTEL_* environment: the sampler, resource attributes, limits.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    global _provider, _tracer
    shutdown()
    _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("zerolens")
    return _tracer


def shutdown() -> None:
    """Stop tracing, after sending the spans still buffered (at exit)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


# --- spans (called only while tracing is on) ------------------------------------------------------------


def _context(parent: Any, carrier: Mapping[str, str] | None) -> Any:
    """The parent context: a span's, the one a carrier's traceparent names, else the current one."""
    from opentelemetry import propagate, trace

    if parent is not None:
        return trace.set_span_in_context(parent)
    if carrier is not None:
        return propagate.extract(carrier)  # no or a malformed traceparent: a new trace
    return None


def start_span(
    name: str,
    *,
    kind: str = "internal",
    parent: Any = None,
    carrier: Mapping[str, str] | None = None,
    links: Sequence[Any] = (),
    start_ns: int | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """A started span (end it with end_span), the child of `parent` (a span), else of the traceparent in
    `carrier` (HTTP headers, or the protocol header's field), else of the current span."""
    from opentelemetry import trace

    return _tracer.start_span(
        name,
        context=_context(parent, carrier),
        kind=trace.SpanKind[kind.upper()],
        attributes=attributes,
        links=[trace.Link(span.get_span_context()) for span in links],
        start_time=start_ns,
    )


def end_span(
    span: Any,
    error: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    end_ns: int | None = None,
) -> None:
    """Set the attributes (and an error, when given) on a span and end it."""
    from opentelemetry.trace import Status, StatusCode

    if attributes:
        span.set_attributes(attributes)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)


@contextlib.contextmanager
def span(
    name: str, *, parent: Any = None, links: Sequence[Any] = (), attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """A span around the block (a child of `parent`, linked to `links`), current within it; an exception
    leaving the block is recorded on it."""
    from opentelemetry import trace

    context = _context(parent, None)
    linked = [trace.Link(other.get_span_context()) for other in links]
    with _tracer.start_as_current_span(name, context, attributes=attributes, links=linked) as current:
        yield current


def activate(current: Any) -> object:
    """Make `current` the current span (the parent of spans started without one); a token for deactivate."""
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(current))


def deactivate(token: object) -> None:
    """Undo activate()."""
    from opentelemetry import context

    context.detach(token)


@contextlib.contextmanager
def client_span(name: str, attributes: Mapping[str, Any]) -> Iterator[tuple[Any, str | None]]:
    """A client span around a call to the model tier, and the traceparent that makes the server's spans
    its children (for the protocol header)."""
    from opentelemetry import propagate, trace

    with _tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes) as current:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield current, carrier.get("traceparent")
