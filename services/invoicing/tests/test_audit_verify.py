"""`audit verify`: every invoice derived again from the log, on the real SQLite ledger; rows
tampered with behind the ledger's back are named, to the minor unit."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from invoicing.application.audit import verify_invoices
from invoicing.application.close_billing_period import close_billing_period
from invoicing.application.corrections import issue_credit_note
from invoicing.application.settings import BillingSettings
from invoicing.domain.tax import TaxRounding
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    GIGABYTE,
    PlanVersionPublished,
    plan_stream,
)
from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money, Rounding
from tests.fixtures.billing_ledger import put, seed_customer, seed_plan_and_tax, use

pytestmark = pytest.mark.integration

SETTINGS = BillingSettings(timezone=ZoneInfo("Asia/Dhaka"))
PERIOD = "2026-03"
RUN_AT = datetime(2026, 4, 1, 3, 0, tzinfo=UTC)


@pytest.fixture
async def ledger(tmp_path: Path):
    path = tmp_path / "ledger.db"
    store = SQLiteEventStore(path)
    await seed_plan_and_tax(store)
    await seed_customer(store, "c1", date(2026, 1, 1), name="গ্রাহক c1")
    await seed_customer(store, "c2", date(2026, 3, 15), name="গ্রাহক c2")  # prorated
    await seed_customer(store, "c3", date(2026, 2, 1), name="গ্রাহক c3")
    for n, octets in enumerate((7 * GIGABYTE, 5 * GIGABYTE + 123)):  # 2 GB over, started
        await use(store, "c1", PERIOD, octets, n)
    report = await close_billing_period(store, FixedClock(RUN_AT), SETTINGS, PERIOD)
    assert len(report.issued) == 3
    yield store, path
    await store.close()


def tamper(path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def edit_data(path: Path, where: str, params: tuple[object, ...], change) -> int:
    """Rewrite the data JSON of the row `where` picks; its global position."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        gp, data = conn.execute(
            f"SELECT global_position, data FROM events WHERE {where}", params
        ).fetchone()
        edited = json.loads(data)
        change(edited)
        conn.execute(
            "UPDATE events SET data = ? WHERE global_position = ?", (json.dumps(edited), gp)
        )
        return int(gp)
    finally:
        conn.close()


async def invoices(store: SQLiteEventStore) -> dict[str, InvoiceIssued]:
    return {i.customer_id: i for i in await all_events_of(store, InvoiceIssued)}


async def test_a_clean_ledger_verifies(ledger) -> None:
    store, _ = ledger
    issued = await invoices(store)
    await issue_credit_note(
        store,
        FixedClock(RUN_AT),
        SETTINGS,
        issued["c1"],
        amount=Money.of("5.00", "USD"),
        reason="outage",
        reference="T-1",
        actor="staff:clerk",
    )
    report = await verify_invoices(store, SETTINGS)
    assert report.findings == []
    assert report.ok
    assert (report.invoices_checked, report.credit_notes_checked) == (3, 1)
    # c1 paid overage and c2 was prorated: verification went through both paths
    assert any(line.kind == "usage" for line in issued["c1"].lines)
    assert issued["c2"].subtotal < issued["c3"].subtotal


async def test_filters_by_customer_and_period(ledger) -> None:
    store, _ = ledger
    assert (await verify_invoices(store, SETTINGS, customer_id="c2")).invoices_checked == 1
    assert (await verify_invoices(store, SETTINGS, period="2026-02")).invoices_checked == 0
    assert (await verify_invoices(store, SETTINGS, period="2026-03")).invoices_checked == 3


async def test_later_changes_to_plans_and_settings_do_not_count_against_an_invoice(ledger) -> None:
    """Derived from the log as it stood when the invoice was recorded, with the rounding it
    recorded: a plan version published afterwards, back-dated, and settings changed since,
    leave it verified."""
    store, _ = ledger
    await put(
        store,
        plan_stream("home"),
        PlanVersionPublished(
            plan_id="home",
            name="Home",
            version=2,
            effective_from=date(2026, 3, 1),
            monthly_fee=Money.of("99.00", "USD"),
            included_bytes=GIGABYTE,
            overage_price=Money.of("9.00", "USD"),
        ),
    )
    changed = dataclasses.replace(
        SETTINGS, tax_rounding=TaxRounding.PER_LINE, rounding=Rounding.HALF_EVEN
    )
    assert (await verify_invoices(store, changed)).findings == []


async def test_a_tampered_plan_event_names_every_invoice_it_priced(ledger) -> None:
    store, path = ledger
    edit_data(path, "type = 'PlanDefined'", (), lambda d: d["monthly_fee"].update(amount="31.00"))
    report = await verify_invoices(store, SETTINGS)
    numbers = {i.number for i in (await invoices(store)).values()}
    assert {f.document for f in report.findings} == numbers
    c3 = (await invoices(store))["c3"]
    total = next(f for f in report.findings if f.document == c3.number and f.field == "total")
    # 30.00 + 15 % = 34.50 recorded; 31.00 + 15 % = 35.65 derived, to the cent
    assert (total.recorded, total.derived) == ("34.50 USD", "35.65 USD")


async def test_a_tampered_invoice_row_is_named_with_its_field(ledger) -> None:
    store, path = ledger
    c3 = (await invoices(store))["c3"]
    gp = edit_data(
        path,
        "type = 'InvoiceIssued' AND stream = ?",
        ("invoice-c3-2026-03",),
        lambda d: d["total"].update(amount="34.49"),
    )
    report = await verify_invoices(store, SETTINGS)
    assert {(f.document, f.position) for f in report.findings} == {(c3.number, gp)}
    assert {f.field for f in report.findings} == {"total = subtotal + tax_total", "total"}
    total = next(f for f in report.findings if f.field == "total")
    assert (total.recorded, total.derived) == ("34.49 USD", "34.50 USD")


async def test_tampered_usage_is_found_on_the_invoice_that_billed_it(ledger) -> None:
    store, path = ledger
    c1 = (await invoices(store))["c1"]
    edit_data(
        path,
        "type = 'UsageRated' AND stream_position = 0",
        (),
        lambda d: d.update(input_octets=d["input_octets"] - 3 * GIGABYTE),
    )
    report = await verify_invoices(store, SETTINGS)
    assert {f.document for f in report.findings} == {c1.number}
    # 9 GB left of 12: within the 10 GB included, so the overage line should not be there
    assert {"lines (count)", "total"} <= {f.field for f in report.findings}


async def test_a_row_edited_into_nonsense_is_reported_not_raised(ledger) -> None:
    store, path = ledger
    gp = edit_data(
        path,
        "type = 'InvoiceIssued' AND stream = ?",
        ("invoice-c2-2026-03",),
        lambda d: d.update(total="lots"),
    )
    report = await verify_invoices(store, SETTINGS)
    assert [(f.position, f.field) for f in report.findings] == [(gp, "event")]
    assert "unreadable InvoiceIssued" in report.findings[0].recorded


async def test_a_number_taken_twice_or_skipped_is_named(ledger) -> None:
    store, path = ledger
    edit_data(
        path,
        "type = 'InvoiceNumberAssigned' AND stream_position = 1",
        (),
        lambda d: d.update(sequence=5),
    )
    report = await verify_invoices(store, SETTINGS)
    assert [f.field for f in report.findings] == [
        "sequence (gapless: its position in the series + 1)"
    ]


async def test_the_chain_names_the_first_edited_row(ledger) -> None:
    store, path = ledger
    gp = edit_data(
        path, "type = 'PlanDefined'", (), lambda d: d["monthly_fee"].update(amount="31.00")
    )
    chain = await store.verify_chain()
    assert chain.broken_at == gp
