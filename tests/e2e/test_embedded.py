"""The thin path on the all-in-one: RADIUS session -> rated usage -> invoice -> e-mail -> paid."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispbill_app.demo import DEMO_NAS_SECRET
from tests.e2e.harness import (
    DEMO_ENV,
    ISPBILL,
    Ispbill,
    Process,
    free_port,
    wait_until,
)
from tests.e2e.scenario import (
    assert_a_clerks_changes_are_read_back_and_audited,
    assert_a_nas_secret_change_takes_effect,
    assert_a_removed_nas_is_refused,
    assert_a_session_is_split_by_band_and_reaches_its_thresholds,
    assert_an_invoice_is_credited_and_the_tax_report_follows,
    assert_bad_packets_dropped_and_counted,
    assert_one_trace_links_packet_to_line,
    assert_the_auditor_verifies_every_invoice,
    assert_usage_before_a_subscription_is_rated_once_it_starts,
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
        {"ISPBILL_TRACE_FILE": str(trace_file), "ISPBILL_TIMEZONE": "UTC", **DEMO_ENV},
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
    assert_a_clerks_changes_are_read_back_and_audited(api)
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


def test_a_network_engineer_manages_nases_from_the_command_line(all_in_one, tmp_path):
    api, *_ = all_in_one
    secret_file = tmp_path / "bng-2.secret"
    secret_file.write_text("from-a-file-secret\n")
    registered = api.cli(
        "nas", "register", "bng-2", "--name", "BNG 2", "--address", "127.0.0.2",
        "--vendor", "cisco", "--require-message-authenticator",
        "--secret-file", str(secret_file), "--format", "json",
    )  # fmt: skip
    shown = json.loads(registered.stdout)
    assert shown["secret_storage"] == "sealed" and shown["require_message_authenticator"]
    assert "from-a-file-secret" not in registered.stdout + registered.stderr
    table = api.cli("nas", "list").stdout
    assert "bng-2" in table and "127.0.0.2" in table and "nas-demo-1" in table
    # The secret from standard input, as a script would pipe it; a change needs every field.
    changed = api.cli(
        "nas", "change", "bng-2", "--address", "127.0.0.3", "--format", "json",
        input="piped-secret\n",
    )  # fmt: skip
    after = json.loads(changed.stdout)  # what was not given is kept, the MA requirement too
    assert (after["name"], after["vendor"], after["ip_address"]) == ("BNG 2", "cisco", "127.0.0.3")
    assert after["require_message_authenticator"] is True
    relaxed = api.cli(
        "nas", "change", "bng-2", "--no-require-message-authenticator", "--format", "json",
        input="piped-secret\n",
    )  # fmt: skip
    assert json.loads(relaxed.stdout)["require_message_authenticator"] is False
    unknown = api.cli("nas", "change", "bng-8", check=False, input="s3cret!\n")
    assert unknown.returncode == 1 and "not registered" in unknown.stderr
    taken = api.cli(
        "nas", "register", "bng-3", "--name", "x", "--address", "127.0.0.3",
        check=False, input="another-secret\n",
    )  # fmt: skip
    assert taken.returncode == 1 and "127.0.0.3 is the address of NAS 'bng-2'" in taken.stderr
    no_secret = api.cli(
        "nas", "register", "bng-4", "--name", "x", "--address", "127.0.0.4", check=False, input=""
    )
    assert no_secret.returncode != 0 and "no RADIUS shared secret" in no_secret.stderr
    api.cli("nas", "remove", "bng-2", "--reason", "lab router returned")
    assert "bng-2" not in api.cli("nas", "list").stdout


def test_usage_before_a_subscription_is_listed_then_rated_once_it_starts(all_in_one):
    api, radius_port, *_ = all_in_one
    assert_usage_before_a_subscription_is_rated_once_it_starts(api, radius_port)


def test_a_session_across_a_band_edge_is_split_and_the_quota_thresholds_are_emitted(all_in_one):
    api, radius_port, *_ = all_in_one
    assert_a_session_is_split_by_band_and_reaches_its_thresholds(api, radius_port)


def test_an_invoice_is_credited_and_the_tax_report_follows(all_in_one):
    api, *_ = all_in_one
    # the thin path's period: its session started an hour before it ran
    period = datetime.fromtimestamp(time.time() - 3600, UTC).strftime("%Y-%m")
    assert_an_invoice_is_credited_and_the_tax_report_follows(api, period)
    assert_the_auditor_verifies_every_invoice(api, period)
