"""Credit notes and voids through the API: partial and full credits in their own gapless
series, retries answered with the same credit note, never more than an invoice's total (two
clerks at once included), voids, statuses and the credit-note history."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services
from ispbill_core.contracts.invoicing import credit_note_series_stream
from ispbill_core.sealing import KEY_ENV
from tests.fixtures.embedded import api_client, embedded_services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NOW = datetime(2026, 3, 10, 9, tzinfo=UTC)


@pytest.fixture
async def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    async with embedded_services(tmp_path / "data", NOW) as services:
        yield services


@pytest.fixture
async def api(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(services) as client:
        await billed(client)
        yield client


async def call(api: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await api.request(method, f"/api/v1{path}", json=body)
    assert response.status_code < 300, response.text
    return response.json()


async def billed(api: httpx.AsyncClient) -> None:
    """Three customers, each invoiced 30.00 + VAT 4.50 = 34.50 USD for February."""
    await call(api, "POST", "/tax-rates", {"region": "metro", "tax_name": "VAT", "rate": "0.15"})
    await call(
        api,
        "POST",
        "/plans",
        {
            "plan_id": "home",
            "name": "Home",
            "currency": "USD",
            "monthly_fee": "30.00",
            "included_gb": 100,
            "overage_per_gb": "1.00",
        },
    )
    for n in (1, 2, 3):
        await call(
            api,
            "POST",
            "/customers",
            {
                "customer_id": f"c-{n}",
                "name": f"C{n}",
                "email": f"c{n}@example.com",
                "tax_region": "metro",
            },
        )
        await call(
            api,
            "POST",
            "/subscriptions",
            {
                "subscription_id": f"s-{n}",
                "customer_id": f"c-{n}",
                "plan_id": "home",
                "radius_username": f"u{n}",
                "started_on": "2026-01-01",
            },
        )
    assert await api.projector.catch_up(timeout=20)  # type: ignore[attr-defined]
    report = await call(api, "POST", "/bill-runs", {"period": "2026-02"})
    assert report["issued"] == ["INV-000001", "INV-000002", "INV-000003"]
    assert await api.projector.catch_up(timeout=20)  # type: ignore[attr-defined]


async def status_of(api: httpx.AsyncClient, number: str) -> str:
    assert await api.projector.catch_up(timeout=20)  # type: ignore[attr-defined]
    return (await call(api, "GET", f"/invoices/{number}"))["status"]


async def test_partial_then_full_credit_retries_and_the_history(api: httpx.AsyncClient) -> None:
    body = {"amount": "11.50", "reason": "three days of outage", "reference": "TICKET-1"}
    first = await api.post("/api/v1/invoices/INV-000001/credit-notes", json=body)
    assert first.status_code == 201, first.text
    note = first.json()
    # a third of 34.50: VAT 1.50 of 10.00
    assert (note["number"], note["total"]["amount"], note["subtotal"]["amount"]) == (
        "CN-000001",
        "11.50",
        "10.00",
    )
    assert [(t["taxable"]["amount"], t["amount"]["amount"]) for t in note["taxes"]] == [
        ("10.00", "1.50")
    ]
    assert note["invoice_credited"]["amount"] == "11.50"
    # the same request again: the same credit note, nothing more credited
    again = await api.post("/api/v1/invoices/INV-000001/credit-notes", json=body)
    assert (again.status_code, again.json()["number"]) == (200, "CN-000001")
    other = await api.post(
        "/api/v1/invoices/INV-000001/credit-notes", json={**body, "amount": "1.00"}
    )
    assert other.status_code == 409, other.text
    assert await status_of(api, "INV-000001") == "issued"
    # the rest: exactly what is left of each part
    rest = await call(
        api,
        "POST",
        "/invoices/INV-000001/credit-notes",
        {"reason": "moved away", "reference": "TICKET-2"},
    )
    assert (rest["number"], rest["total"]["amount"], rest["taxes"][0]["amount"]["amount"]) == (
        "CN-000002",
        "23.00",
        "3.00",
    )
    assert await status_of(api, "INV-000001") == "credited"
    more = await api.post(
        "/api/v1/invoices/INV-000001/credit-notes",
        json={"amount": "0.01", "reason": "x", "reference": "TICKET-3"},
    )
    assert more.status_code == 422 and "in full already" in more.json()["detail"]

    mine = await call(api, "GET", "/credit-notes?customer_id=c-1")
    assert [n["number"] for n in mine] == ["CN-000002", "CN-000001"]
    assert [n["number"] for n in await call(api, "GET", "/credit-notes?invoice=INV-000001")] == [
        "CN-000002",
        "CN-000001",
    ]
    shown = await call(api, "GET", "/credit-notes/CN-000001")
    assert shown["invoice_number"] == "INV-000001" and shown["reason"] == "three days of outage"
    assert (await api.get("/api/v1/credit-notes/CN-999999")).status_code == 404
    assert [i["number"] for i in await call(api, "GET", "/invoices?status=credited")] == [
        "INV-000001"
    ]


async def test_two_clerks_crediting_at_once_never_pass_the_total(
    services: Services, api: httpx.AsyncClient
) -> None:
    async def credit(reference: str) -> httpx.Response:
        return await api.post(
            "/api/v1/invoices/INV-000002/credit-notes",
            json={"amount": "20.00", "reason": "goodwill", "reference": reference},
        )

    results = await asyncio.gather(credit("A"), credit("B"))
    assert sorted(r.status_code for r in results) == [201, 422]
    refused = next(r for r in results if r.status_code == 422)
    assert "more than the 14.50 USD" in refused.json()["detail"]
    # the refused one took no number: the series is gapless
    series = await services.store.read_stream(credit_note_series_stream("CN"))
    assert [r.decode().sequence for r in series] == [1]  # type: ignore[attr-defined]


async def test_a_void_invoice_owes_nothing_and_takes_no_credit(api: httpx.AsyncClient) -> None:
    voided = await call(api, "POST", "/invoices/INV-000003/void", {"reason": "wrong customer"})
    assert voided["number"] == "INV-000003"
    again = await call(api, "POST", "/invoices/INV-000003/void", {"reason": "wrong customer"})
    assert again == voided
    assert await status_of(api, "INV-000003") == "void"
    credit = await api.post(
        "/api/v1/invoices/INV-000003/credit-notes", json={"reason": "x", "reference": "T"}
    )
    assert credit.status_code == 422 and "void" in credit.json()["detail"]
    # an invoice with a credit note is credited, not voided
    await call(
        api,
        "POST",
        "/invoices/INV-000002/credit-notes",
        {"amount": "1.00", "reason": "x", "reference": "T-9"},
    )
    refused = await api.post("/api/v1/invoices/INV-000002/void", json={"reason": "x"})
    assert refused.status_code == 422 and "credit notes" in refused.json()["detail"]
    missing = await api.post("/api/v1/invoices/INV-404/void", json={"reason": "x"})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "abc"},
        {"amount": "-1.00"},
        {"amount": "1e2"},
        {"amount": 5},
        {"amount": "1.001"},
        {"amount": "99999999999999999999"},
        {"reason": "x\u202ey"},
        {"reason": ""},
        {"reference": "has space"},
        {"reference": "x" * 101},
        {"extra": True},
    ],
)
async def test_bad_credit_requests_are_refused_and_nothing_is_written(
    services: Services, api: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await api.post(
        "/api/v1/invoices/INV-000002/credit-notes",
        json={"amount": "1.00", "reason": "ok", "reference": "R-1", **body},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await services.store.stream_version(credit_note_series_stream("CN")) is None


async def test_the_tax_report_leaves_out_void_invoices_and_takes_off_credit_notes(
    api: httpx.AsyncClient,
) -> None:
    await call(
        api, "POST", "/invoices/INV-000001/credit-notes", {"reason": "moved", "reference": "T-1"}
    )
    await call(api, "POST", "/invoices/INV-000003/void", {"reason": "wrong customer"})
    assert await api.projector.catch_up(timeout=20)  # type: ignore[attr-defined]
    [row] = await call(api, "GET", "/reports/tax?period=2026-02")
    # three invoices of 30.00 + 4.50: one void, one credited in full
    assert (row["invoices"], row["credit_notes"], row["taxable"], row["tax"]) == (
        2,
        1,
        "30.00",
        "4.50",
    )


async def test_invoices_and_credit_notes_export_as_csv(api: httpx.AsyncClient) -> None:
    await call(
        api,
        "POST",
        "/invoices/INV-000001/credit-notes",
        {"amount": "11.50", "reason": "=cmd|' /C calc'!A0", "reference": "T-1"},
    )
    assert await api.projector.catch_up(timeout=20)  # type: ignore[attr-defined]
    invoices = await api.get("/api/v1/invoices", params={"period": "2026-02", "format": "csv"})
    assert invoices.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(invoices.text)))
    assert [(r["number"], r["status"], r["total"], r["tax_region"]) for r in rows] == [
        ("INV-000003", "issued", "34.50", "metro"),
        ("INV-000002", "issued", "34.50", "metro"),
        ("INV-000001", "issued", "34.50", "metro"),
    ]
    notes = await api.get("/api/v1/credit-notes", params={"format": "csv"})
    [note] = list(csv.DictReader(io.StringIO(notes.text)))
    assert (note["number"], note["invoice_number"], note["total"]) == (
        "CN-000001",
        "INV-000001",
        "11.50",
    )
    assert note["reason"] == "'=cmd|' /C calc'!A0"  # shown as text, never run


async def test_audit_verify_and_the_chain_through_the_api(
    api: httpx.AsyncClient, services: Services
) -> None:
    """An auditor's replay passes on the clean ledger, credit notes included; an invoice row
    edited in the SQLite file behind the application's back is named by both checks."""
    body = {"amount": "11.50", "reason": "outage", "reference": "TICKET-9"}
    assert (await api.post("/api/v1/invoices/INV-000002/credit-notes", json=body)).is_success
    clean = await call(api, "GET", "/audit/invoices")
    assert clean["ok"], clean["findings"]
    assert (clean["invoices_checked"], clean["credit_notes_checked"]) == (3, 1)
    assert (await call(api, "GET", "/audit/invoices?customer_id=c-3&period=2026-02"))[
        "invoices_checked"
    ] == 1
    chain = await call(api, "GET", "/audit/chain")
    assert chain["ok"] and chain["broken_at"] is None and chain["unchained"] == 0
    anchor = f"{chain['head_position']}:{chain['head_hash']}"
    assert (await call(api, "GET", f"/audit/chain?anchor={anchor}"))["anchors_checked"] == [
        chain["head_position"]
    ]
    bad = await api.get("/api/v1/audit/chain?anchor=12:nothex")
    assert bad.status_code == 422 and "anchor" in bad.text

    import sqlite3

    path = getattr(services.store, "path")  # noqa: B009 - the embedded ledger is SQLite
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (gp,) = conn.execute(
            "SELECT global_position FROM events WHERE type = 'InvoiceIssued'"
            " AND stream = 'invoice-c-3-2026-02'"
        ).fetchone()
        conn.execute(
            "UPDATE events SET data = replace(data, '\"34.50\"', '\"3.45\"')"
            " WHERE global_position = ?",
            (gp,),
        )
    finally:
        conn.close()
    found = await call(api, "GET", "/audit/invoices")
    assert not found["ok"]
    assert {(f["document"], f["position"]) for f in found["findings"]} == {("INV-000003", gp)}
    total = next(f for f in found["findings"] if f["field"] == "total")
    assert (total["recorded"], total["derived"]) == ("3.45 USD", "34.50 USD")
    broken = await call(api, "GET", "/audit/chain")
    assert (broken["ok"], broken["broken_at"]) == (False, gp)


async def test_a_customer_invoiced_in_bengali_gets_a_bengali_pdf(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The customer's `language` is recorded on the invoice; its PDF prints the Bengali
    template with the Noto fonts, and pdftotext finds the name, the number and the total."""
    import shutil

    bad = await api.patch("/api/v1/customers/c-1", json={"language": "Bengali"})
    assert bad.status_code == 422, bad.text
    name = "রহিম উদ্দিন"
    await call(api, "PATCH", "/customers/c-2", {"language": "bn", "name": name})
    assert (await call(api, "GET", "/customers/c-2"))["language"] == "bn"
    report = await call(api, "POST", "/bill-runs", {"period": "2026-03"})
    assert len(report["issued"]) == 3, report
    assert await api.projector.catch_up(timeout=20)  # type: ignore[attr-defined]
    [invoice] = await call(api, "GET", "/invoices?customer_id=c-2&period=2026-03")
    assert invoice["language"] == "bn" and invoice["customer_name"] == name
    response = await api.get(f"/api/v1/invoices/{invoice['number']}/pdf")
    assert response.status_code == 200 and response.content.startswith(b"%PDF-")
    assert shutil.which("pdftotext"), "make install-system installs poppler-utils"
    path = tmp_path / "invoice.pdf"
    path.write_bytes(response.content)
    run = await asyncio.create_subprocess_exec(
        "pdftotext", "-enc", "UTF-8", str(path), "-", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await run.communicate()
    assert run.returncode == 0
    text = out.decode()
    for expected in (name, invoice["number"], "সর্বমোট", f"{invoice['total']['amount']} USD"):
        assert expected in text, expected


async def test_receivables_as_of_any_past_day(api: httpx.AsyncClient, services: Services) -> None:
    """The three February invoices (34.50 each) were issued on 10 March. On 11 March c-1 is
    credited 11.50 and pays 10.00, c-2 overpays 40.00, and c-3's invoice is voided; each day
    reads back as it was, whatever happened after it."""
    clock = services.clock
    clock.set(datetime(2026, 3, 11, 9, tzinfo=UTC))  # type: ignore[attr-defined]
    credit = {"amount": "11.50", "reason": "outage", "reference": "T-11"}
    assert (await api.post("/api/v1/invoices/INV-000001/credit-notes", json=credit)).is_success
    for invoice, amount, ref in (("INV-000001", "10.00", "R-1"), ("INV-000002", "40.00", "R-2")):
        paid = await api.post(
            "/api/v1/payments/manual",
            json={"invoice": invoice, "amount": amount, "reference": ref},
        )
        assert paid.status_code == 201, paid.text
    voided = await api.post("/api/v1/invoices/INV-000003/void", json={"reason": "duplicate"})
    assert voided.is_success, voided.text

    async def balances(day: str) -> dict[str, tuple[str, str, str, str]]:
        rows = await call(api, "GET", f"/reports/receivables?as_of={day}")
        return {
            r["customer_id"]: (r["invoiced"], r["credited"], r["paid"], r["balance"]) for r in rows
        }

    assert await balances("2026-03-09") == {}
    owed = ("34.50", "0.00", "0.00", "34.50")
    assert await balances("2026-03-10") == {"c-1": owed, "c-2": owed, "c-3": owed}
    assert await balances("2026-03-11") == {
        "c-1": ("34.50", "11.50", "10.00", "13.00"),
        "c-2": ("34.50", "0.00", "40.00", "-5.50"),  # overpaid: credit
    }
    assert await balances("2026-12-31") == await balances("2026-03-11")
    one = await call(api, "GET", "/reports/receivables?as_of=2026-03-11&customer_id=c-2")
    assert [r["customer_id"] for r in one] == ["c-2"]
    csv_text = (await api.get("/api/v1/reports/receivables?as_of=2026-03-11&format=csv")).text
    assert (
        csv_text.splitlines()[0] == "customer_id,currency,invoiced,credited,paid,balance,invoices"
    )
    assert "c-2,USD,34.50,0.00,40.00,-5.50,1" in csv_text
    bad = await api.get("/api/v1/reports/receivables?as_of=0000-01-01")
    assert bad.status_code == 422
