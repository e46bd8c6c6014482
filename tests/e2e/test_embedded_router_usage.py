"""RADIUS accounting and a router's counters measure one subscriber: the all-in-one bills
RADIUS only, and the discrepancy report shows both figures, flagged above the threshold.

The router is a real net-snmp agent on 127.0.0.1 whose lo interface counts what the test writes
(a `pass` program serves ifHCInOctets/ifHCOutOctets of ifIndex 1 from two files); the NAS is
FreeRADIUS's radclient; `ispbill run --with-demo` is the real process, polling the agent
(ISPBILL_POLLERS) and answering `ispbill usage discrepancies`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
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
    radclient,
    session_packets,
    wait_until,
)

pytestmark = pytest.mark.e2e

COMMUNITY = "ispbille2e"
IF_X_ENTRY = ".1.3.6.1.2.1.31.1.1.1"
#: carol's first counters on the router: what the first poll takes as its baseline
BASE_IN, BASE_OUT = 7_000_000, 9_000_000

PASS_PROGRAM = f"""#!/bin/sh
# net-snmp "pass": ifHCInOctets.1 and ifHCOutOctets.1 (lo) read from the files beside this
BASE="{IF_X_ENTRY}"
DIR="$(dirname "$0")"
case "$2" in
  "$BASE.6"*) column=6; file=in ;;
  "$BASE.10"*) column=10; file=out ;;
  *) exit 0 ;;
esac
case "$1" in
  -g) [ "$2" = "$BASE.$column.1" ] || exit 0 ;;
  -n) [ "$2" = "$BASE.$column" ] || exit 0 ;;
  *) exit 0 ;;
esac
echo "$BASE.$column.1"; echo counter64; cat "$DIR/$file"
"""


class RouterCounters:
    """The agent's lo counters, as the router would count carol's traffic."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.set(BASE_IN, BASE_OUT)

    def set(self, octets_in: int, octets_out: int) -> None:
        for name, value in (("in", octets_in), ("out", octets_out)):
            tmp = self.directory / f"{name}.tmp"
            tmp.write_text(f"{value}\n")
            tmp.replace(self.directory / name)  # never half a number


def snmpd_binary() -> str | None:
    return shutil.which("snmpd") or next(
        (p for p in ("/usr/sbin/snmpd", "/sbin/snmpd") if os.access(p, os.X_OK)), None
    )


def answers(port: int) -> bool:
    snmpget = shutil.which("snmpget")
    if snmpget is None:  # no client tools: give the agent a moment instead
        time.sleep(1)
        return True
    query = ["-v2c", "-c", COMMUNITY, "-t", "0.5", "-r", "0", "-On", f"127.0.0.1:{port}"]
    result = subprocess.run(
        [snmpget, *query, f"{IF_X_ENTRY}.6.1"],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "MIBS": ""},
    )
    return result.returncode == 0 and str(BASE_IN) in result.stdout


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterCounters]:
    binary = snmpd_binary()
    if binary is None:
        pytest.skip("snmpd is not installed (make install-system: apt-get install snmpd snmp)")
    directory = tmp_path / "snmpd"
    directory.mkdir()
    program = directory / "counters.sh"
    program.write_text(PASS_PROGRAM)
    program.chmod(0o755)
    port = free_port(socket.SOCK_DGRAM)
    counters = RouterCounters(directory, port)
    conf = directory / "snmpd.conf"
    conf.write_text(
        f"agentAddress udp:127.0.0.1:{port}\nrocommunity {COMMUNITY} 127.0.0.1\n"
        f"pass {IF_X_ENTRY}.6 {program}\npass {IF_X_ENTRY}.10 {program}\n"
    )
    log = directory / "snmpd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-f", "-Lo", "-C", "-c", str(conf), "-p", str(directory / "snmpd.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MIBS": ""},
        )
    try:
        deadline = time.monotonic() + 15
        while not answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"snmpd did not start: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.2)
        yield counters
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def all_in_one(tmp_path: Path, router: RouterCounters) -> Iterator[tuple[Ispbill, int]]:
    (tmp_path / "community").write_text(COMMUNITY + "\n")
    pollers = tmp_path / "pollers.toml"
    pollers.write_text(
        f"""
interval = 1

[[snmp]]
router_id = "core-1"
host = "127.0.0.1"
port = {router.port}
community_file = "community"
interfaces = {{ lo = "carol" }}
"""
    )
    http, radius = free_port(), free_port(socket.SOCK_DGRAM)
    proc = Process(
        "ispbill-run-router-usage",
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
            str(free_port()),
            "--with-demo",
        ],
        tmp_path,
        {"ISPBILL_POLLERS": str(pollers), "ISPBILL_TIMEZONE": "UTC", **DEMO_ENV},
    )
    api = Ispbill(http)
    try:
        wait_until(lambda: (proc.assert_running(), api.healthy())[1], what="the REST API")
        wait_until(lambda: api.get("/api/v1/nas"), what="the demo NAS")
        yield api, radius
    finally:
        code = proc.stop()
        print(proc.log_text()[-20000:])
        assert code == 0, proc.log_text()[-3000:]


def test_both_sources_of_one_subscriber_are_compared_and_radius_alone_is_billed(
    all_in_one: tuple[Ispbill, int], router: RouterCounters
) -> None:
    api, radius_port = all_in_one
    wait_until(
        lambda: api.get("/api/v1/collector/pollers").get("core-1", {}).get("samples_published"),
        what="the router's baseline sample",
    )
    started = int(time.time()) - 120
    period = datetime.fromtimestamp(started, UTC).strftime("%Y-%m")
    billed_before = int(api.get(f"/api/v1/usage/C1003/{period}")["total_octets"])

    # RADIUS: carol's session, 4 MB up and 6 MB down ((down, up) in session_packets).
    packets = session_packets(
        "carol", "e2e-carol", [(6_000_000, 4_000_000)], started_at=started, step=60
    )
    radclient(radius_port, DEMO_NAS_SECRET, packets)
    # The router counted 6 % more: 4.2 MB received from carol, 6.4 MB sent to her.
    router.set(BASE_IN + 4_200_000, BASE_OUT + 6_400_000)

    def carol() -> dict | None:
        report = api.cli_json("usage", "discrepancies", "--all")
        rows = [d for d in report["discrepancies"] if d["subscription_id"] == "S1003"]
        if rows and rows[0]["router_octets"] == 10_600_000 and rows[0]["radius_octets"]:
            return rows[0]
        return None

    row = wait_until(carol, timeout=60, what="carol's usage from both sources")
    assert row["customer_id"] == "C1003" and row["period"] == period
    assert (row["radius_octets"], row["router_octets"]) == (10_000_000, 10_600_000)
    assert (row["difference_octets"], row["difference_pct"]) == (600_000, 6.0)
    assert row["flagged"] is True and row["billed_by"] == "radius"

    # Flagged rows only, by default: carol is listed above 5 %, not above 10 %.
    table = api.cli("usage", "discrepancies", "--period", period)
    assert "S1003" in table.stdout and "10600000" in table.stdout, table.stdout
    assert "1 of 1 compared flagged above 5 %" in table.stderr, table.stderr
    relaxed = api.cli_json("usage", "discrepancies", "--period", period, "--threshold", "10")
    assert (relaxed["compared"], relaxed["flagged"], relaxed["discrepancies"]) == (1, 0, [])
    as_json = api.cli("usage", "discrepancies", "--json", "--threshold", "10", "--all")
    assert '"flagged": false' in as_json.stdout

    # Billed once: by RADIUS; the router's figure is only compared.
    billed = int(api.get(f"/api/v1/usage/C1003/{period}")["total_octets"])
    assert billed == billed_before + 10_000_000
