"""Late usage (ADR 0032): usage of an invoiced period rated after its invoice is billed once,
as an adjustment line on the next invoice linked to the original, priced against that
period's included data; never dropped, never billed twice. Golden amounts by hand."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from invoicing.application.audit import verify_invoices
from invoicing.application.close_billing_period import BillRunCatalogue, close_billing_period
from invoicing.application.corrections import void_invoice
from invoicing.application.read_models import BillingCatalogueProjection, ProjectedCatalogue
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    GIGABYTE,
)
from ispbill_core.contracts.invoicing import (
    InvoiceIssued,
    LateUsageBilled,
    LineKind,
    invoice_stream,
)
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from ispbill_core.projections.projector import Projector
from ispbill_core.projections.sqlite import SQLiteReadModels
from tests.fixtures.billing_ledger import seed_customer, seed_plan_and_tax
from tests.fixtures.billing_ledger import use as use_octets

pytestmark = pytest.mark.integration

SETTINGS = BillingSettings(timezone=ZoneInfo("Asia/Dhaka"))


def run_at(period: str) -> FixedClock:
    year, month = map(int, period.split("-"))
    month += 1
    if month == 13:
        year, month = year + 1, 1
    return FixedClock(datetime(year, month, 1, 3, tzinfo=UTC))


async def use(store: SQLiteEventStore, customer: str, period: str, gb: Decimal, n: int) -> None:
    await use_octets(store, customer, period, int(gb * GIGABYTE), n)


#: How the bill run knows its customers and what each invoiced period billed: a scan of the
#: log (every candidate period's invoice stream read), or the catalogue projection (its
#: `usage_billed` filters, the invoice stream decides).
CATALOGUE: dict[int, Any] = {}


@pytest.fixture(params=["scanned", "projected"])
async def store(tmp_path: Path, request: pytest.FixtureRequest):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    await seed_plan_and_tax(s)
    for customer in ("c1", "c2"):
        await seed_customer(s, customer)
    if request.param == "projected":
        db = SQLiteReadModels(s)
        projector = Projector(s, db, [BillingCatalogueProjection()])

        async def projected() -> BillRunCatalogue:
            await projector.rebuild_now()
            catalogue = await ProjectedCatalogue(db)()
            assert catalogue.usage_billed is not None
            return catalogue

        CATALOGUE[id(s)] = projected
    yield s
    CATALOGUE.pop(id(s), None)
    await s.close()


async def bill(
    store: SQLiteEventStore, period: str, settings: BillingSettings = SETTINGS
) -> dict[str, InvoiceIssued]:
    report = await close_billing_period(
        store, run_at(period), settings, period, CATALOGUE.get(id(store))
    )
    assert not report.failed and not report.skipped, report
    found = {}
    for customer in ("c1", "c2"):
        recorded = await store.read_stream(invoice_stream(customer, period))
        if recorded:
            invoice = recorded[0].decode()
            assert isinstance(invoice, InvoiceIssued)
            found[customer] = invoice
    return found


def adjustments(invoice: InvoiceIssued) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (f"{line.quantity}", f"{line.amount.amount}", line.adjusts_invoice, line.adjusts_period)
        for line in invoice.lines
        if line.kind == LineKind.USAGE_ADJUSTMENT
    ]


async def late_marks(store: SQLiteEventStore, customer: str, period: str) -> list[LateUsageBilled]:
    return [
        r.decode()  # type: ignore[misc]
        for r in await store.read_stream(invoice_stream(customer, period))
        if r.type == LateUsageBilled.event_type
    ]


async def test_late_usage_is_billed_once_on_the_next_invoice_against_the_periods_allowance(
    store,
) -> None:
    await use(store, "c1", "2026-03", Decimal(9), 0)
    await use(store, "c2", "2026-03", Decimal(5), 0)
    march = await bill(store, "2026-03")
    assert march["c1"].total == Money.of("34.50", "USD")  # 9 of 10 GB: no overage
    # Rated after March was invoiced: c1 3 GB more (12 GB: 2 GB over), c2 2 GB (7 GB: none).
    await use(store, "c1", "2026-03", Decimal(3), 1)
    await use(store, "c2", "2026-03", Decimal(2), 1)
    await use(store, "c1", "2026-04", Decimal(1), 0)
    april = await bill(store, "2026-04")
    # 2 started GB x 2.00 = 4.00 on top of April's 30.00; VAT 15 % of 34.00 = 5.10
    assert adjustments(april["c1"]) == [("2", "4.00", march["c1"].number, "2026-03")]
    assert (april["c1"].subtotal, april["c1"].total) == (
        Money.of("34.00", "USD"),
        Money.of("39.10", "USD"),
    )
    [spec] = april["c1"].late_usage
    assert (spec.period, spec.invoice_number, spec.billed_through, spec.usage_through) == (
        "2026-03",
        march["c1"].number,
        0,
        1,
    )
    # c2's late 2 GB still fit in March's 10 GB: no line, nothing more to pay, marked billed
    assert adjustments(april["c2"]) == [] and april["c2"].total == Money.of("34.50", "USD")
    [mark] = await late_marks(store, "c2", "2026-03")
    assert (mark.usage_through, mark.amount, mark.on_invoice_number) == (
        1,
        Money.zero("USD"),
        april["c2"].number,
    )
    [mark] = await late_marks(store, "c1", "2026-03")
    assert (mark.amount, mark.on_invoice_number) == (Money.of("4.00", "USD"), april["c1"].number)

    # Nothing late since: May adjusts nothing; rerunning April issues nothing new.
    rerun = await close_billing_period(
        store, run_at("2026-04"), SETTINGS, "2026-04", CATALOGUE.get(id(store))
    )
    assert rerun.issued == []
    may = await bill(store, "2026-05")
    assert adjustments(may["c1"]) == [] and may["c1"].late_usage == ()

    # Half a GB more of March, rated in June: 12.5 GB, 3 started GB over, 2 billed: one more.
    await use(store, "c1", "2026-03", Decimal("0.5"), 2)
    june = await bill(store, "2026-06")
    assert adjustments(june["c1"]) == [("1", "2.00", march["c1"].number, "2026-03")]
    assert june["c1"].late_usage[0].billed_through == 1

    report = await verify_invoices(store, SETTINGS)
    assert report.findings == [] and report.invoices_checked == 8


async def test_the_look_back_is_a_setting_and_a_voided_period_is_left_to_its_reissue(store) -> None:
    await use(store, "c1", "2026-01", Decimal(10), 0)
    await use(store, "c2", "2026-01", Decimal(10), 0)
    january = await bill(store, "2026-01")
    await void_invoice(
        store, run_at("2026-01"), january["c2"], reason="wrong address", actor="staff:clerk"
    )
    for period in ("2026-02", "2026-03"):
        await bill(store, period)
    await use(store, "c1", "2026-01", Decimal(1), 1)
    await use(store, "c2", "2026-01", Decimal(1), 1)
    # January is three periods before April: a look-back of 2 does not reach it...
    april = await bill(store, "2026-04", dataclasses.replace(SETTINGS, late_usage_periods=2))
    assert adjustments(april["c1"]) == []
    # ...May's run with a look-back of 4 does, once; June's (5) finds nothing left.
    may = await bill(store, "2026-05", dataclasses.replace(SETTINGS, late_usage_periods=4))
    assert adjustments(may["c1"]) == [("1", "2.00", january["c1"].number, "2026-01")]
    assert adjustments(may["c2"]) == []  # its January invoice was voided
    june = await bill(store, "2026-06", dataclasses.replace(SETTINGS, late_usage_periods=5))
    assert adjustments(june["c1"]) == []
    assert (await verify_invoices(store, SETTINGS)).findings == []


async def test_a_dry_run_shows_the_adjustment_and_writes_nothing(store) -> None:
    await use(store, "c1", "2026-03", Decimal(10), 0)
    await bill(store, "2026-03")
    await use(store, "c1", "2026-03", Decimal("0.1"), 1)
    before = await store.head_position()
    report = await close_billing_period(store, run_at("2026-04"), SETTINGS, "2026-04", dry_run=True)
    preview = next(p for p in report.previews if p.customer_id == "c1")
    assert (preview.subtotal, preview.lines) == ("32.00", 2)
    assert await store.head_position() == before


async def test_audit_verify_names_a_tampered_adjustment(store, tmp_path: Path) -> None:
    import json
    import sqlite3

    await use(store, "c1", "2026-03", Decimal(11), 0)
    await bill(store, "2026-03")
    await use(store, "c1", "2026-03", Decimal(2), 1)
    april = await bill(store, "2026-04")
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    try:
        gp, data = conn.execute(
            "SELECT global_position, data FROM events WHERE stream = 'invoice-c1-2026-04'"
        ).fetchone()
        edited = json.loads(data)
        edited["late_usage"][0]["billed_through"] = 1  # claims nothing late was left
        conn.execute(
            "UPDATE events SET data = ? WHERE global_position = ?", (json.dumps(edited), gp)
        )
    finally:
        conn.close()
    report = await verify_invoices(store, SETTINGS)
    assert {f.document for f in report.findings} == {april["c1"].number}
    assert "late_usage 2026-03 billed_through (what was billed before)" in {
        f.field for f in report.findings
    }


async def test_a_catalogue_behind_the_ledger_never_bills_late_usage_twice(store) -> None:
    """The projection only filters: one that has not folded April's LateUsageBilled yet still
    sends May's run to March's invoice stream, which says it is billed."""
    await use(store, "c1", "2026-03", Decimal(10), 0)
    await bill(store, "2026-03")
    await use(store, "c1", "2026-03", Decimal(2), 1)
    db = SQLiteReadModels(store)
    projector = Projector(store, db, [BillingCatalogueProjection()])
    await projector.rebuild_now()
    stale = await ProjectedCatalogue(db)()  # knows March billed through position 0

    async def behind() -> BillRunCatalogue:
        return stale

    april = await close_billing_period(store, run_at("2026-04"), SETTINGS, "2026-04", behind)
    may = await close_billing_period(store, run_at("2026-05"), SETTINGS, "2026-05", behind)
    assert len(april.issued) == len(may.issued) == 2
    lines = [
        line
        for period in ("2026-04", "2026-05")
        for recorded in await store.read_stream(invoice_stream("c1", period))
        if recorded.type == InvoiceIssued.event_type
        for line in recorded.decode().lines  # type: ignore[attr-defined]
        if line.kind == LineKind.USAGE_ADJUSTMENT
    ]
    assert [(line.quantity, line.adjusts_period) for line in lines] == [(Decimal(2), "2026-03")]


def _edit(store: SQLiteEventStore, sql: str, *params: object) -> None:
    import sqlite3

    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


async def test_an_invoice_issued_before_the_bound_was_recorded_is_left_alone(store) -> None:
    """An invoice from before invoices recorded `usage_through` (and `rounding`) billed every
    bucket it saw; which ones is not known: its period's later usage is not billed late (it
    might be twice), and `audit verify` derives it from the buckets recorded before it."""
    import json

    await use(store, "c1", "2026-03", Decimal(13), 0)
    march = await bill(store, "2026-03")
    (gp, data) = next(
        (r.global_position, r.data)
        for r in await store.read_stream(invoice_stream("c1", "2026-03"))
    )
    for field in ("usage_through", "rounding", "tax_rounding"):
        data.pop(field)
    _edit(store, "UPDATE events SET data = ? WHERE global_position = ?", json.dumps(data), gp)
    await use(store, "c1", "2026-03", Decimal(1), 1)
    april = await bill(store, "2026-04")
    assert adjustments(april["c1"]) == [] and april["c1"].late_usage == ()
    assert march["c1"].total == Money.of("41.40", "USD")  # 13 GB: 3 started GB over, 6.00
    assert (await verify_invoices(store, SETTINGS, period="2026-03")).findings == []


async def test_voiding_the_invoice_that_billed_late_usage_bills_it_again(store) -> None:
    await use(store, "c1", "2026-03", Decimal(10), 0)
    march = await bill(store, "2026-03")
    await use(store, "c1", "2026-03", Decimal(3), 1)
    april = await bill(store, "2026-04")
    assert adjustments(april["c1"]) == [("3", "6.00", march["c1"].number, "2026-03")]
    await void_invoice(store, run_at("2026-04"), april["c1"], reason="wrong plan", actor="staff:x")
    may = await bill(store, "2026-05")
    assert adjustments(may["c1"]) == [("3", "6.00", march["c1"].number, "2026-03")]
    assert may["c1"].late_usage[0].billed_through == 0  # April's adjustment no longer counts
    june = await bill(store, "2026-06")
    assert adjustments(june["c1"]) == []
    assert (await verify_invoices(store, SETTINGS)).findings == []


async def test_a_lost_mark_is_written_again_by_the_next_run_of_the_period(store) -> None:
    """A ledger whose appends of several streams are not one transaction (KurrentDB) may keep
    an invoice and lose the mark it leaves in the original's stream: running the bill run of
    that period again writes the mark, so the late usage is not billed again next month."""
    await use(store, "c1", "2026-03", Decimal(10), 0)
    await bill(store, "2026-03")
    await use(store, "c1", "2026-03", Decimal(3), 1)
    await bill(store, "2026-04")
    _edit(store, "DELETE FROM events WHERE type = 'LateUsageBilled'")
    rerun = await close_billing_period(
        store, run_at("2026-04"), SETTINGS, "2026-04", CATALOGUE.get(id(store))
    )
    assert rerun.issued == [] and len(rerun.already_issued) == 2
    assert [m.usage_through for m in await late_marks(store, "c1", "2026-03")] == [1]
    may = await bill(store, "2026-05")
    assert adjustments(may["c1"]) == []


async def test_a_tampered_currency_is_a_finding_not_a_crash(store) -> None:
    import json

    await use(store, "c1", "2026-03", Decimal(11), 0)
    march = await bill(store, "2026-03")
    recorded = (await store.read_stream(invoice_stream("c1", "2026-03")))[0]
    data = recorded.data
    data["lines"][0]["amount"]["currency"] = "EUR"
    _edit(
        store,
        "UPDATE events SET data = ? WHERE global_position = ?",
        json.dumps(data),
        recorded.global_position,
    )
    report = await verify_invoices(store, SETTINGS)
    assert {(f.document, f.field) for f in report.findings} >= {(march["c1"].number, "checks")}
