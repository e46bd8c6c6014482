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
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ispbill_core.files import open_private

_PROPAGATOR = TraceContextTextMapPropagator()
_configured = False
#: The provider setup_tracing installed without any exporter, if it did.
_unexported: TracerProvider | None = None


#: A trace file is rotated when it passes this size (ISPBILL_TRACE_FILE_MAX_BYTES); the
#: previous ones are kept as <file>.1 (newest) to <file>.N (ISPBILL_TRACE_FILE_BACKUPS).
DEFAULT_TRACE_FILE_MAX_BYTES = 64 << 20
DEFAULT_TRACE_FILE_BACKUPS = 3


class TelemetryError(RuntimeError):
    """An exporter is configured but cannot be used: the process must not start, silently
    dropping every span."""


class JsonLinesSpanExporter(SpanExporter):
    """Writes one JSON object per finished span to a file: a trace anyone can grep. The file
    rotates by size: past `max_bytes` it becomes <path>.1, and so on up to `backups` files."""

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = DEFAULT_TRACE_FILE_MAX_BYTES,
        backups: int = DEFAULT_TRACE_FILE_BACKUPS,
    ) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._file: IO[str] = self._open()

    def _open(self) -> IO[str]:
        return open_private(self._path, "a")

    def _rotate(self) -> None:
        self._file.close()
        if self._backups <= 0:
            os.truncate(self._path, 0)
        else:
            for n in range(self._backups - 1, 0, -1):
                older = f"{self._path}.{n}"
                if os.path.exists(older):
                    os.replace(older, f"{self._path}.{n + 1}")
            os.replace(self._path, f"{self._path}.1")
        self._file = self._open()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                self._file.write(span.to_json(indent=None) + "\n")
            self._file.flush()
            if self._max_bytes > 0 and self._file.tell() >= self._max_bytes:
                self._rotate()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise TelemetryError(f"{name}={raw!r} is not a whole number") from None


def _otlp_exporter() -> SpanExporter:
    """The OTLP span exporter of the configured protocol (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf", the default, or "grpc"); it reads its
    endpoint, headers and timeout from the standard OTEL_EXPORTER_OTLP_* variables."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            return HttpExporter()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter()
    except ImportError as exc:
        raise TelemetryError(
            f"OTLP over {protocol} is configured but its exporter cannot be loaded ({exc});"
            " install opentelemetry-exporter-otlp-proto-http / -grpc"
        ) from None
    raise TelemetryError(
        f"OTLP protocol {protocol!r} is not one ispbill exports with: http/protobuf or grpc"
    )


def configured_exporters() -> list[SpanExporter]:
    """The exporters the environment asks for; TelemetryError when one cannot be loaded.

    OTEL_TRACES_EXPORTER (comma-separated: otlp, console, none) wins; without it, an OTLP
    endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) means otlp.
    ISPBILL_TRACE_FILE adds the rotating JSON-lines file."""
    exporters: list[SpanExporter] = []
    names_raw = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if names_raw:
        names = [n.strip().lower() for n in names_raw.split(",") if n.strip()]
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        names = ["otlp"]
    else:
        names = []
    for name in names:
        if name == "otlp":
            exporters.append(_otlp_exporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "none":
            continue
        else:
            raise TelemetryError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which ispbill cannot load"
                " (it knows otlp, console and none)"
            )
    if path := os.environ.get("ISPBILL_TRACE_FILE"):
        try:
            exporters.append(
                JsonLinesSpanExporter(
                    path,
                    max_bytes=_env_int(
                        "ISPBILL_TRACE_FILE_MAX_BYTES", DEFAULT_TRACE_FILE_MAX_BYTES
                    ),
                    backups=_env_int("ISPBILL_TRACE_FILE_BACKUPS", DEFAULT_TRACE_FILE_BACKUPS),
                )
            )
        except OSError as exc:
            raise TelemetryError(f"ISPBILL_TRACE_FILE {path!r} cannot be written: {exc}") from None
    return exporters


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install a tracer provider once per process.

    With no exporter given, the environment chooses (configured_exporters): OTLP when
    OTEL_EXPORTER_OTLP_ENDPOINT is set, a JSON-lines file with ISPBILL_TRACE_FILE; otherwise
    spans are dropped. An exporter that is asked for and cannot be loaded raises
    TelemetryError: the process stops rather than drop every span unnoticed.
    """
    global _configured, _unexported
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        if exporter is not None:
            current.add_span_processor(SimpleSpanProcessor(exporter))
            _unexported = None
        return current
    exporters = [exporter] if exporter is not None else configured_exporters()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    for chosen in exporters:
        if isinstance(chosen, JsonLinesSpanExporter | ConsoleSpanExporter) or exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(chosen))
        else:
            # Over the network: in batches, off the request's path.
            provider.add_span_processor(BatchSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    _unexported = None if exporters else provider
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
