"""spans_are_exported: whether a process's spans go anywhere (each case in a fresh process,
since OpenTelemetry lets a process set its tracer provider only once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
