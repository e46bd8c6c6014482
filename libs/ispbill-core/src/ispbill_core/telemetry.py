"""OpenTelemetry setup, and carrying a trace across the ledger and the bus as a traceparent."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import IO

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_configured = False
#: The provider setup_tracing installed without any exporter, if it did.
_unexported: TracerProvider | None = None


class JsonLinesSpanExporter(SpanExporter):
    """Writes one JSON object per finished span to a file: a trace anyone can grep."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                self._file.write(span.to_json(indent=None) + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install a tracer provider once per process.

    With no exporter given, ISPBILL_TRACE_FILE (JSON lines) or OTEL_EXPORTER_OTLP_ENDPOINT
    (OTLP, when the exporter package is installed) choose one; otherwise spans are dropped.
    """
    global _configured, _unexported
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        if exporter is not None:
            current.add_span_processor(SimpleSpanProcessor(exporter))
            _unexported = None
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exported = True
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif path := os.environ.get("ISPBILL_TRACE_FILE"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            exported = False
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        exported = False
    trace.set_tracer_provider(provider)
    _unexported = None if exported else provider
    _configured = True
    return provider


def spans_are_exported() -> bool:
    """Whether the spans of this process go anywhere.

    False when no tracer provider is set, or when setup_tracing installed one without an
    exporter (no ISPBILL_TRACE_FILE, no OTEL_EXPORTER_OTLP_ENDPOINT): its spans are recorded
    and dropped. A hot path (the RADIUS collector, ~2 us per span) asks this once and then makes
    no span at all.
    """
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return False
    return provider is not _unexported


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, for an event's metadata or a message header."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """A context whose parent is the span named by `traceparent`, to continue its trace."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def span_context_from_traceparent(traceparent: str | None) -> SpanContext | None:
    ctx = context_from_traceparent(traceparent)
    if ctx is None:
        return None
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


def links_from_traceparents(traceparents: Sequence[str]) -> list[Link]:
    """Span links to every trace named, for a span that aggregates many (an invoice line)."""
    links = []
    for tp in dict.fromkeys(traceparents):
        sc = span_context_from_traceparent(tp)
        if sc is not None:
            links.append(Link(sc))
    return links


def trace_id_of(traceparent: str | None) -> str | None:
    sc = span_context_from_traceparent(traceparent)
    return None if sc is None else format(sc.trace_id, "032x")


def read_spans(path: str) -> list[dict[str, object]]:
    """Spans written by JsonLinesSpanExporter (used by tests and the audit CLI)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
