"""The thin path on the all-in-one: RADIUS session -> rated usage -> invoice -> e-mail -> paid."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ispbill_app.demo import DEMO_NAS_SECRET
from tests.e2e.harness import ISPBILL, Ispbill, Process, free_port, wait_until
from tests.e2e.scenario import (
    assert_a_nas_secret_change_takes_effect,
    assert_a_removed_nas_is_refused,
    assert_bad_packets_dropped_and_counted,
    assert_one_trace_links_packet_to_line,
    run_thin_path,
)
from tests.fixtures.smtp import Mailbox

pytestmark = pytest.mark.e2e


@pytest.fixture
def all_in_one(tmp_path: Path, smtp_server: Mailbox):
    http, radius, grpc = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    trace_file = tmp_path / "trace.jsonl"
    proc = Process(
        "ispbill-run",
        [
            *ISPBILL,
            "run",
            "--data-dir",
            str(tmp_path / "data"),
            "--http-port",
            str(http),
            "--radius-acct-port",
            str(radius),
            "--grpc-port",
            str(grpc),
            "--smtp-host",
            smtp_server.host,
            "--smtp-port",
            str(smtp_server.port),
            "--with-demo",
        ],
        tmp_path,
        {"ISPBILL_TRACE_FILE": str(trace_file), "ISPBILL_TIMEZONE": "UTC"},
    )
    api = Ispbill(http)
    try:
        wait_until(lambda: (proc.assert_running(), api.healthy())[1], what="the REST API")
        wait_until(lambda: api.get("/api/v1/nas"), what="the demo NAS")
        yield api, radius, trace_file, proc, tmp_path / "data"
    finally:
        code = proc.stop()
        # pytest shows captured output only for failing tests: the server's log is the evidence.
        print(
            proc.log_text()[-20000:] if not os.environ.get("ISPBILL_SHOW_LOGS") else proc.log_text()
        )
        assert code == 0, proc.log_text()[-3000:]


def test_radius_session_becomes_one_paid_emailed_invoice(all_in_one, smtp_server):
    api, radius_port, trace_file, *_ = all_in_one
    invoice = run_thin_path(api, radius_port, smtp_server)
    assert_one_trace_links_packet_to_line([trace_file], invoice["number"])


def test_bad_packets_are_dropped_counted_and_serving_continues(all_in_one):
    api, radius_port, *_ = all_in_one
    assert_bad_packets_dropped_and_counted(api, "/api/v1/collector/counters", radius_port)


def test_cli_reports_errors_clearly(all_in_one):
    api, *_ = all_in_one
    result = api.cli("invoices", "show", "INV-999999", check=False)
    assert result.returncode == 1 and "no invoice" in result.stderr
    result = api.cli("bill-run", "--period", "2026-13", check=False)
    assert result.returncode == 1 and "422" in result.stderr
    body = json.loads(api.cli("invoices", "list", "--format", "json").stdout)
    assert body == []


def test_nas_secrets_are_sealed_in_the_ledger_changed_and_the_nas_removed(all_in_one):
    api, radius_port, _trace, _proc, data = all_in_one
    key_file = data / "secrets.key"
    assert key_file.stat().st_mode & 0o777 == 0o600  # made on first start, owner only
    new_secret = assert_a_nas_secret_change_takes_effect(api, radius_port)
    assert_a_removed_nas_is_refused(api, radius_port, new_secret)
    for path in data.glob("ledger.db*"):  # the database and its WAL
        assert DEMO_NAS_SECRET.encode() not in path.read_bytes(), path
