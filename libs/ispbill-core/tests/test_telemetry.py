"""spans_are_exported: whether a process's spans go anywhere (each case in a fresh process,
since OpenTelemetry lets a process set its tracer provider only once)."""

from __future__ import annotations

import http.server
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from ispbill_core.telemetry import JsonLinesSpanExporter, read_spans

pytestmark = pytest.mark.unit

PROBE = """
import sys
from ispbill_core.telemetry import setup_tracing, spans_are_exported
before = spans_are_exported()
if sys.argv[1] == "setup":
    setup_tracing("probe")
print(before, spans_are_exported())
"""


def probe(step: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ISPBILL_TRACE", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, step],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_no_provider_exports_nothing() -> None:
    assert probe("none") == "False False"


def test_a_provider_without_an_exporter_exports_nothing() -> None:
    assert probe("setup") == "False False"


def test_a_trace_file_is_an_exporter(tmp_path) -> None:
    assert probe("setup", ISPBILL_TRACE_FILE=str(tmp_path / "spans.jsonl")) == "False True"


SPAN = """
import sys
from opentelemetry import trace
from ispbill_core.telemetry import setup_tracing
try:
    provider = setup_tracing("probe")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
with trace.get_tracer("probe").start_as_current_span("invoice-issued-probe"):
    pass
provider.shutdown()  # flushes the batch, as the SDK does at exit
print("done")
"""


def run_span(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ISPBILL_TRACE", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-c", SPAN],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A tiny OTLP/HTTP receiver: every POST (path, content type, body), answered 200."""
    received: list[tuple[str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.append((self.path, self.headers.get("Content-Type", ""), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_with_an_otlp_endpoint_spans_arrive_at_the_collector(otlp_receiver) -> None:
    endpoint, received = otlp_receiver
    done = run_span(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(path, ctype) for path, ctype, _ in received] == [
        ("/v1/traces", "application/x-protobuf")
    ]
    request = ExportTraceServiceRequest.FromString(received[0][2])
    names = [
        span.name
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert names == ["invoice-issued-probe"]
    [resource] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
    assert service == "probe"


@pytest.mark.integration
def test_an_endpoint_is_exported_to_with_setup_tracing(otlp_receiver) -> None:
    endpoint, _ = otlp_receiver
    assert probe("setup", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint) == "False True"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER names 'zipkin'"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "x",
            },
            "OTLP protocol 'x'",
        ),
        ({"ISPBILL_TRACE_FILE": "/nonexistent-dir/spans.jsonl"}, "cannot be written"),
    ],
)
def test_an_exporter_that_cannot_load_stops_the_start(env: dict[str, str], message: str) -> None:
    done = run_span(**env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("TelemetryError: ") and message in done.stdout


def test_the_trace_file_rotates_by_size(tmp_path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = JsonLinesSpanExporter(str(path), max_bytes=2000, backups=2)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("rotation")
    for n in range(40):
        with tracer.start_as_current_span(f"span-{n}"):
            pass
    provider.shutdown()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size < 2000 + 2000  # one span past the limit at most
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # Oldest first: .2, .1, the current file; together the latest spans in order, the oldest
    # rotated away.
    kept = [
        int(str(span["name"]).split("-")[1])
        for name in ("spans.jsonl.2", "spans.jsonl.1", "spans.jsonl")
        for span in read_spans(str(tmp_path / name))
    ]
    assert kept == list(range(40 - len(kept), 40)) and 0 < len(kept) < 40
