"""`ispbill import customers FILE.csv` against a running `ispbill run`: every bad row is
reported with its row number and reason, the rest recorded; a second run records nothing.
Also the records commands that exist on this server (create and list)."""

from __future__ import annotations

import csv
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from ispbill_app import credentials
from ispbill_app.cli import main as cli_main
from ispbill_app.client import log_in
from ispbill_app.commands.imports import CUSTOMER_COLUMNS

pytestmark = pytest.mark.integration


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, url: str, data: Path, token: str) -> None:
        self.url, self.data, self.token = url, data, token

    def main(self, args: list[str]) -> int:
        """`ispbill --server URL ARGS` as the logged-in admin (the token in ISPBILL_TOKEN)."""
        with mock.patch.dict(os.environ, {credentials.TOKEN_ENV: self.token}):
            return cli_main(["--server", self.url, *args])

    def cli(self, *args: str, capsys: Any) -> tuple[int, str, str]:
        capsys.readouterr()
        code = self.main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    def events(self) -> int:
        db = sqlite3.connect(f"file:{self.data / 'ledger.db'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            db.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ispbill")
    http = free_port()
    log = (tmp / "server.log").open("w")
    env = {**os.environ, "ISPBILL_TIMEZONE": "UTC", "PYTHONUNBUFFERED": "1"}
    env.pop("ISPBILL_SERVER", None)
    # the first admin, made on the ledger before the server starts
    (tmp / "admin-password").write_text("import-test-password\n")
    password_file = str(tmp / "admin-password")
    admin = ["staff", "create-admin", "--username", "admin", "--password-file", password_file]
    assert cli_main([*admin, "--data-dir", str(tmp / "data")]) == 0
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "ispbill_app.cli", "run",
            "--data-dir", str(tmp / "data"), "--host", "127.0.0.1",
            "--http-port", str(http),
            "--radius-acct-port", str(free_port(socket.SOCK_DGRAM)),
            "--grpc-port", str(free_port()),
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        token = log_in(url, "admin", "import-test-password")
        httpx.post(
            url + "/api/v1/tax-rates",
            json={"region": "dhaka", "tax_name": "VAT", "rate": "0.15"},
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        ).raise_for_status()
        yield Server(url, tmp / "data", token)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(autouse=True)
def no_stored_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(credentials.CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.delenv(credentials.TOKEN_ENV, raising=False)


@pytest.fixture(scope="module")
def plan(server: Server) -> str:
    code = server.main(
        ["plans", "create", "home-25", "--name", "Home 25",
         "--currency", "BDT", "--monthly-fee", "1000.00", "--included-gb", "100",
         "--overage-per-gb", "10.00"]
    )  # fmt: skip
    assert code == 0
    return "home-25"


def test_records_are_created_and_listed_from_the_command_line(server, plan, capsys) -> None:
    code, out, err = server.cli("plans", "list", capsys=capsys)
    assert code == 0 and "home-25" in out and "Home 25" in out, err
    code, _, err = server.cli(
        "customers", "create", "K1", "--name", "Karim [Traders] and a long company name"
        " that a narrow terminal would have to wrap onto another line", "--email",
        "karim@example.com", "--tax-region", "dhaka", "--billing-address", "Road 1, Dhaka",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = server.cli("customers", "list", capsys=capsys)
    # Piped output is never cut: the whole name, markup-looking brackets included.
    assert "Karim [Traders] and a long company name that a narrow terminal would have" in out
    assert "…" not in out
    code, _, err = server.cli(
        "subscriptions", "create", "KS1", "--customer", "K1", "--plan", plan,
        "--username", "karim", "--started-on", "2026-01-01", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = server.cli("subscriptions", "list", "--output", "json", capsys=capsys)
    assert [s["subscription_id"] for s in json.loads(out)] == ["KS1"]
    code, _, err = server.cli(
        "subscriptions", "create", "KS2", "--customer", "K1", "--plan", "nope",
        "--username", "karim2", "--started-on", "2026-01-01", capsys=capsys,
    )  # fmt: skip
    assert code == 1 and "plan 'nope' does not exist (HTTP 404)" in err


GOOD = {
    "name": "Customer {i}",
    "email": "c{i}@example.com",
    "phone": "+8801{i:09d}",
    "tax_region": "dhaka",
    "billing_address": "House {i}, Road 2, Dhaka",
    "service_address": "House {i}, Road 2, Dhaka",
    "account_type": "home",
    "tags": "north;fiber",
    "plan_id": "home-25",
    "started_on": "2026-01-01",
}
#: One kind of bad row per row number; the reason the report must give for it.
BAD: list[tuple[dict[str, str], str]] = [
    ({"plan_id": "gold-999"}, "unknown plan 'gold-999'"),
    ({"email": "not-an-email"}, "email:"),
    ({"phone": "01712"}, "phone:"),
    ({"tax_region": "mars"}, "unknown region 'mars'"),
    ({"started_on": "2026-02-30"}, "started_on:"),
    ({"customer_id": "C {i:05d}"}, "customer_id:"),  # miskeyed: a space
    ({"subscription_id": "previous"}, "duplicate subscription_id"),
    ({"customer_id": "previous", "name": "Someone Else"}, "duplicate customer_id"),
]


def write_csv(path: Path, rows: int, bad_every: int = 50) -> dict[int, str]:
    """`rows` rows; one in `bad_every` is bad (2 %). Returns {row number: expected reason}."""
    expected: dict[int, str] = {}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CUSTOMER_COLUMNS)
        writer.writeheader()
        for i in range(rows):
            row = {k: v.format(i=i) for k, v in GOOD.items()}
            row |= {
                "customer_id": f"C{i:05d}",
                "subscription_id": f"S{i:05d}",
                "radius_username": f"user{i:05d}",
            }
            if i % bad_every == bad_every - 1:
                change, reason = BAD[(i // bad_every) % len(BAD)]
                for column, value in change.items():
                    previous = f"{column[0].upper()}{i - 1:05d}"
                    row[column] = previous if value == "previous" else value.format(i=i)
                expected[i + 2] = reason  # the header is row 1
            writer.writerow(row)
    return expected


def import_json(server: Server, path: Path, capsys: Any, *extra: str) -> tuple[int, Any, float]:
    started = time.perf_counter()
    code, out, _err = server.cli("import", "customers", str(path), "--format", "json", *extra,
                                capsys=capsys)  # fmt: skip
    elapsed = time.perf_counter() - started
    return code, json.loads(out), elapsed


def test_ten_thousand_rows_with_two_percent_bad_import_once(server, plan, tmp_path, capsys) -> None:
    path = tmp_path / "customers.csv"
    expected = write_csv(path, 10_000)
    assert len(expected) == 200
    before = server.events()

    code, dry, _ = import_json(server, path, capsys, "--dry-run")
    assert code == 1 and (dry["created"], dry["invalid"]) == (9800, 200)
    assert server.events() == before  # a dry run records nothing

    code, first, took = import_json(server, path, capsys)
    print(f"\nimport of 10,000 rows: {took:.1f} s", file=sys.__stderr__)
    assert code == 1
    assert (first["created"], first["unchanged"], first["invalid"]) == (9800, 0, 200)
    invalid = {r["row"]: "; ".join(r["errors"]) for r in first["results"] if r["errors"]}
    assert set(invalid) == set(expected)
    for row, reason in expected.items():
        assert reason in invalid[row], (row, invalid[row])
    after = server.events()
    # a customer, its username's case-folded key, the username's claim, the subscription
    assert after - before == 4 * 9800
    assert took < 60

    code, again, took_again = import_json(server, path, capsys)
    print(f"second run: {took_again:.1f} s", file=sys.__stderr__)
    assert (again["created"], again["unchanged"], again["invalid"]) == (0, 9800, 200)
    assert server.events() == after

    # The table names each bad row and why, and totals the rest.
    code, out, _ = server.cli("import", "customers", str(path), capsys=capsys)
    assert "10000 rows: created 0, unchanged 9800, invalid 200" in out
    assert "unknown region 'mars'" in out


def test_details_that_differ_from_the_ledger_and_customer_only_rows(
    server, plan, tmp_path, capsys
) -> None:
    path = tmp_path / "few.csv"
    rows = [
        {"customer_id": "D1", "name": "Dina", "email": "dina@example.com",
         "tax_region": "dhaka"},  # customer only
        {"customer_id": "D2", "name": "Dev", "email": "dev@example.com", "tax_region": "dhaka",
         "subscription_id": "DS2", "plan_id": plan, "radius_username": "dev",
         "started_on": "2026-02-01"},
        {"customer_id": "D3", "name": "Dan", "email": "dan@example.com", "tax_region": "dhaka",
         "subscription_id": "DS3", "plan_id": plan},  # half a subscription
        {"customer_id": "D4", "name": "Dola", "email": "dola@example.com",
         "tax_region": "dhaka", "subscription_id": "DS4", "plan_id": plan,
         "radius_username": "karim", "started_on": "2026-02-01"},  # taken (K1's)
        {"customer_id": "D5", "name": "Dipu", "email": "dipu@example.com",
         "tax_region": "dhaka", "account_type": "castle", "tags": "Not A Slug"},
    ]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CUSTOMER_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    code, first, _ = import_json(server, path, capsys)
    assert code == 1  # some rows are invalid
    status = {r["row"]: (r["status"], "; ".join(r["errors"])) for r in first["results"]}
    assert status[2] == ("created", "") and status[3] == ("created", "")
    assert status[4][0] == "invalid" and "needs radius_username, started_on" in status[4][1]
    assert status[5][0] == "invalid" and "RADIUS username 'karim' is taken" in status[5][1]
    assert status[6][0] == "invalid" and "account_type" in status[6][1] and "tags" in status[6][1]

    rows[0]["name"] = "Dina Rahman"
    rows[1]["started_on"] = "2026-03-01"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CUSTOMER_COLUMNS)
        writer.writeheader()
        writer.writerows(rows[:2])
    before = server.events()
    _code, second, _ = import_json(server, path, capsys)
    errors = {r["row"]: "; ".join(r["errors"]) for r in second["results"]}
    assert "customer 'D1' exists with other details" in errors[2]
    assert "subscription 'DS2' exists with other details" in errors[3]
    assert server.events() == before


def test_a_file_without_the_columns_is_refused_whole(server, tmp_path, capsys) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("id,fullname\n1,x\n")
    code, _, err = server.cli("import", "customers", str(path), capsys=capsys)
    assert code == 1 and "no column customer_id, name, email, tax_region" in err
