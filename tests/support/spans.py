"""Tracing into memory for a test: the spans both tiers made, and how they hang together."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services import tracing


@contextlib.contextmanager
def recording_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the block, every finished span kept in the exporter; off again afterwards."""
    exporter = InMemorySpanExporter()
    tracing.install("zerolens-test", SimpleSpanProcessor(exporter))  # exports as each span ends
    try:
        yield exporter
    finally:
        tracing.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    """The finished spans by name, each list in the order they ended."""
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def parent_of(span: ReadableSpan) -> int | None:
    """The span id of the span's parent (None for a root span)."""
    return span.parent.span_id if span.parent is not None else None


def span_id(span: Any) -> int:
    return span.get_span_context().span_id
