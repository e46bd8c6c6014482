"""Migrating from FreeRADIUS: `ispbill import radius-detail` against a running all-in-one.

The detail files are what FreeRADIUS 3.2 wrote for a session of the demo subscriber bob
(services/usage-collector/tests/fixtures/freeradius). Part of that session also reached
ispbill live, as it does while both servers receive accounting during a migration.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from pathlib import Path

import pytest

from ispbill_core.contracts.usage_collector import AccountingRecordReceived, accounting_stream
from tests.e2e.harness import DEMO_ENV, ISPBILL, Ispbill, Process, free_port, radclient, wait_until

pytestmark = pytest.mark.e2e

RADACCT = (
    Path(__file__).parents[2] / "services/usage-collector/tests/fixtures/freeradius/radacct-utc"
)
DEMO_SECRET = "demo-radius-secret"
BOB = {
    "User-Name": "bob",
    "Acct-Session-Id": "mig-1",
    "NAS-IP-Address": "10.0.0.1",
    "NAS-Port": 7,
    "NAS-Port-Type": "Ethernet",
    "Service-Type": "Framed-User",
    "Framed-Protocol": "PPP",
    "Framed-IP-Address": "100.64.0.10",
    "Calling-Station-Id": "AA-BB-CC-00-11-22",
    "Acct-Authentic": "RADIUS",
}
#: The Interim-Update of the detail file, as the NAS sent it (see the fixtures' README).
INTERIM = {
    **BOB,
    "Acct-Status-Type": "Interim-Update",
    "Acct-Session-Time": 600,
    "Event-Timestamp": 1773130200,
    "Acct-Input-Octets": 500_000_000,
    "Acct-Input-Gigawords": 0,
    "Acct-Output-Octets": 3_000_000_000,
    "Acct-Output-Gigawords": 0,
    "Acct-Input-Packets": 400_000,
    "Acct-Output-Packets": 2_100_000,
}


@pytest.fixture
def all_in_one(tmp_path: Path):
    http, radius, grpc = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    data = tmp_path / "data"
    proc = Process(
        "ispbill-run",
        [
            *ISPBILL,
            "run",
            "--data-dir",
            str(data),
            "--http-port",
            str(http),
            "--radius-acct-port",
            str(radius),
            "--grpc-port",
            str(grpc),
            "--with-demo",
        ],
        tmp_path,
        {"ISPBILL_TIMEZONE": "UTC", **DEMO_ENV},
    )
    api = Ispbill(http)
    try:
        wait_until(lambda: (proc.assert_running(), api.healthy())[1], what="the REST API")
        wait_until(lambda: api.get("/api/v1/nas"), what="the demo NAS")
        yield api, radius, data / "ledger.db"
    finally:
        code = proc.stop()
        print(
            proc.log_text()[-20000:] if not os.environ.get("ISPBILL_SHOW_LOGS") else proc.log_text()
        )
        assert code == 0, proc.log_text()[-3000:]


def accounting_records(ledger: Path) -> int:
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM events WHERE stream = ? AND type = ?",
            (accounting_stream("nas-demo-1"), AccountingRecordReceived.event_type),
        ).fetchone()
    return int(count)


def usage_of_bob(api: Ispbill) -> tuple[int, int]:
    usage = api.get("/api/v1/usage/C1002/2026-03")
    return usage["input_octets"], usage["output_octets"]


def test_freeradius_history_is_imported_once_alongside_what_came_live(all_in_one):
    api, radius_port, ledger = all_in_one
    radclient(radius_port, DEMO_SECRET, [INTERIM])
    wait_until(lambda: usage_of_bob(api) == (500_000_000, 3_000_000_000), what="live usage")
    assert accounting_records(ledger) == 1

    first = json.loads(api.cli("import", "radius-detail", str(RADACCT), "--format", "json").stdout)
    assert first == {
        "files": 2,
        "records": 5,
        "malformed": 0,
        "imported": 3,
        "repeated": 0,
        "skipped": {"invalid_record": 1, "unknown_nas": 1},
        "unknown_nas": {"127.0.0.2": 1},
        "dry_run": False,
    }
    wait_until(
        lambda: usage_of_bob(api) == (1_200_000_000, 7_500_000_000), what="the imported usage"
    )
    # Start, Interim-Update and Stop: the Interim-Update ispbill had received live is one fact.
    assert accounting_records(ledger) == 3

    again = api.cli("import", "radius-detail", str(RADACCT))
    assert "imported 3, repeated 0, malformed 0, skipped 2" in again.stdout
    assert "no NAS registered at 127.0.0.2: 1 record" in again.stdout
    assert "detail-20260310:78: skipped (invalid_record)" in again.stderr
    assert accounting_records(ledger) == 3
    assert usage_of_bob(api) == (1_200_000_000, 7_500_000_000)


def test_a_dry_run_and_a_nas_named_by_id(all_in_one):
    api, _, ledger = all_in_one
    other = RADACCT / "127.0.0.2" / "detail-20260310"
    result = json.loads(
        api.cli(
            "import",
            "radius-detail",
            str(other),
            "--nas",
            "nas-demo-1",
            "--dry-run",
            "--format",
            "json",
        ).stdout
    )
    assert (result["imported"], result["skipped"], result["dry_run"]) == (1, {}, True)
    assert accounting_records(ledger) == 0

    unknown = api.cli("import", "radius-detail", str(other), "--nas", "nas-x", check=False)
    assert unknown.returncode == 1
    assert "no NAS registered with the id 'nas-x' (HTTP 422)" in unknown.stderr


def test_local_time_without_a_zone_stops_the_import_with_the_reason(all_in_one):
    api, *_ = all_in_one
    berlin = RADACCT.parent / "detail-europe-berlin"
    result = api.cli("import", "radius-detail", str(berlin), check=False)
    assert result.returncode == 1
    assert "detail-europe-berlin:10" in result.stderr and "--timezone" in result.stderr
