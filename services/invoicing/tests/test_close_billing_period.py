"""The bill run on the real SQLite ledger: totals, one invoice per customer, gapless numbers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from invoicing.application.close_billing_period import close_billing_period, invoice_id_for
from invoicing.application.set_tax_rate import set_tax_rate
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    GIGABYTE,
    CustomerRegistered,
    PlanDefined,
    SubscriptionStarted,
    customer_stream,
    plan_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import (
    InvoiceIssued,
    InvoiceNumberAssigned,
    LineKind,
    invoice_series_stream,
    invoice_stream,
)
from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.events import DomainEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, NO_STREAM
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Dhaka")
SETTINGS = BillingSettings(timezone=TZ)
PERIOD = "2026-03"
RUN_AT = datetime(2026, 4, 1, 3, 0, tzinfo=UTC)


async def put(store: SQLiteEventStore, stream: str, event: DomainEvent) -> None:
    await store.append(
        stream,
        [new_event(event, id=deterministic_id("seed", stream, event), occurred_at=RUN_AT)],
        ANY,
    )


async def seed_customer(
    store: SQLiteEventStore,
    customer_id: str,
    *,
    started_on: date = date(2026, 1, 1),
    plan_id: str = "home",
) -> None:
    await put(
        store,
        customer_stream(customer_id),
        CustomerRegistered(
            customer_id=customer_id,
            name=f"Customer {customer_id}",
            email=f"{customer_id}@example.com",
            tax_region="BD",
        ),
    )
    await put(
        store,
        subscription_stream(f"sub-{customer_id}"),
        SubscriptionStarted(
            subscription_id=f"sub-{customer_id}",
            customer_id=customer_id,
            plan_id=plan_id,
            radius_username=customer_id,
            started_on=started_on,
        ),
    )


async def seed_usage(
    store: SQLiteEventStore, customer_id: str, octets: list[tuple[int, int]], period: str = PERIOD
) -> None:
    for n, (i, o) in enumerate(octets):
        usage = UsageRated(
            customer_id=customer_id,
            subscription_id=f"sub-{customer_id}",
            period=period,
            session_key="nas-1-s-1-0",
            record_id=deterministic_id("rec", customer_id, period, n),
            input_octets=i,
            output_octets=o,
            occurred_at=datetime(2026, 3, 10, tzinfo=UTC),
        )
        await put(store, usage_stream(customer_id, period), usage)


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    await put(
        s,
        plan_stream("home"),
        PlanDefined(
            plan_id="home",
            name="Home",
            monthly_fee=Money.of("30.00", "USD"),
            included_bytes=10 * GIGABYTE,
            overage_price=Money.of("2.00", "USD"),
        ),
    )
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    await set_tax_rate(s, clock, "BD", "VAT", Decimal("0.15"), "admin")
    yield s
    await s.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(RUN_AT)


async def issued(store: SQLiteEventStore) -> list[InvoiceIssued]:
    return await all_events_of(store, InvoiceIssued)


async def series_numbers(store: SQLiteEventStore) -> list[InvoiceNumberAssigned]:
    return [
        e.decode()  # type: ignore[misc]
        for e in await store.read_stream(invoice_series_stream(SETTINGS.series))
    ]


async def assert_one_invoice_each_and_gapless(store: SQLiteEventStore, customers: list[str]):
    invoices = await issued(store)
    assert sorted(i.customer_id for i in invoices) == sorted(customers)
    for c in customers:
        assert len(await store.read_stream(invoice_stream(c, PERIOD))) == 1
    numbers = await series_numbers(store)
    assert [n.sequence for n in numbers] == list(range(1, len(numbers) + 1))
    assert len({n.invoice_id for n in numbers}) == len(numbers)
    assigned = {n.invoice_id: n.number for n in numbers}
    for invoice in invoices:
        assert assigned[invoice.invoice_id] == invoice.number
    assert len({i.number for i in invoices}) == len(invoices)
    return invoices


async def test_the_bill_run_issues_one_invoice_per_customer_with_correct_totals(
    store, clock
) -> None:
    await seed_customer(store, "c-1")
    await seed_customer(store, "c-2")
    # 12.5 GB in the period: 2.5 GB beyond the 10 included, billed as 3 started GB.
    await seed_usage(
        store, "c-1", [(2 * GIGABYTE, 4 * GIGABYTE), (GIGABYTE, 5 * GIGABYTE + GIGABYTE // 2)]
    )
    # Usage of another period does not count.
    await seed_usage(store, "c-1", [(50 * GIGABYTE, 0)], period="2026-02")

    report = await close_billing_period(store, clock, SETTINGS, PERIOD)

    assert report.issued == ["INV-000001", "INV-000002"]
    assert report.already_issued == [] and report.skipped == {}
    invoices = {
        i.customer_id: i for i in await assert_one_invoice_each_and_gapless(store, ["c-1", "c-2"])
    }
    c1 = invoices["c-1"]
    assert [line.kind for line in c1.lines] == [LineKind.RECURRING, LineKind.USAGE]
    assert c1.lines[1].quantity == 3
    assert c1.subtotal == Money.of("36.00", "USD")
    assert c1.tax_total == Money.of("5.40", "USD")
    assert c1.total == Money.of("41.40", "USD")
    assert c1.invoice_id == invoice_id_for("c-1", PERIOD)
    assert c1.customer_email == "c-1@example.com"
    assert c1.period == PERIOD
    # Issued at 09:00 on 1 April in Dhaka; due 14 days later in the ISP's calendar.
    assert c1.due_on == date(2026, 4, 15)


async def test_a_customer_without_usage_gets_the_recurring_line_only(store, clock) -> None:
    await seed_customer(store, "c-2")
    await close_billing_period(store, clock, SETTINGS, PERIOD)
    [invoice] = await issued(store)
    assert [line.kind for line in invoice.lines] == [LineKind.RECURRING]
    assert invoice.subtotal == Money.of("30.00", "USD")
    assert invoice.total == Money.of("34.50", "USD")


async def test_a_subscription_starting_next_month_is_not_billed(store, clock) -> None:
    await seed_customer(store, "c-1")
    await seed_customer(store, "c-late", started_on=date(2026, 4, 1))
    report = await close_billing_period(store, clock, SETTINGS, PERIOD)
    assert report.issued == ["INV-000001"]
    assert [i.customer_id for i in await issued(store)] == ["c-1"]
    assert await store.read_stream(invoice_stream("c-late", PERIOD)) == []
    assert len(await series_numbers(store)) == 1


async def test_a_subscription_starting_mid_month_is_prorated(store, clock) -> None:
    await seed_customer(store, "c-mid", started_on=date(2026, 3, 16))
    await close_billing_period(store, clock, SETTINGS, PERIOD)
    [invoice] = await issued(store)
    # 16 of March's 31 days of 30.00: 15.4838... rounds to 15.48.
    assert invoice.subtotal == Money.of("15.48", "USD")


async def test_a_rerun_issues_nothing_new(store, clock) -> None:
    for c in ["c-1", "c-2", "c-3"]:
        await seed_customer(store, c)
    first = await close_billing_period(store, clock, SETTINGS, PERIOD)
    clock.set(datetime(2026, 4, 2, tzinfo=UTC))
    second = await close_billing_period(store, clock, SETTINGS, PERIOD)
    assert second.issued == []
    assert second.already_issued == first.issued
    await assert_one_invoice_each_and_gapless(store, ["c-1", "c-2", "c-3"])


async def test_two_concurrent_bill_runs_issue_one_invoice_each_with_gapless_numbers(
    store, clock
) -> None:
    customers = [f"c-{n:02d}" for n in range(12)]
    for c in customers:
        await seed_customer(store, c)
    reports = await asyncio.gather(
        *(close_billing_period(store, clock, SETTINGS, PERIOD) for _ in range(3))
    )
    invoices = await assert_one_invoice_each_and_gapless(store, customers)
    assert len(await series_numbers(store)) == len(customers)
    numbers = {i.number for i in invoices}
    for report in reports:
        assert set(report.issued) | set(report.already_issued) == numbers
    # Each invoice is reported issued by exactly one of the racing runs.
    issued_by_runs = [n for report in reports for n in report.issued]
    assert sorted(issued_by_runs) == sorted(numbers)


async def test_a_number_assigned_before_a_crash_is_used_not_reassigned(store, clock) -> None:
    for c in ["c-1", "c-2", "c-3"]:
        await seed_customer(store, c)
    # A bill run that crashed right after taking c-2's number, before InvoiceIssued (on a
    # store whose append of several streams is not one transaction, or before bill runs
    # appended a chunk's numbers and invoices together).
    c2 = invoice_id_for("c-2", PERIOD)
    taken = InvoiceNumberAssigned(
        series=SETTINGS.series,
        sequence=1,
        number="INV-000001",
        invoice_id=c2,
        customer_id="c-2",
        period=PERIOD,
    )
    await store.append(
        invoice_series_stream(SETTINGS.series),
        [new_event(taken, id=deterministic_id("invoice-number", c2), occurred_at=RUN_AT)],
        NO_STREAM,
    )

    await close_billing_period(store, clock, SETTINGS, PERIOD)

    invoices = {
        i.customer_id: i
        for i in await assert_one_invoice_each_and_gapless(store, ["c-1", "c-2", "c-3"])
    }
    assert invoices["c-2"].number == "INV-000001"
    assert invoices["c-1"].number == "INV-000002"
    assert invoices["c-3"].number == "INV-000003"


async def test_numbers_continue_across_periods_and_are_never_reused(store, clock) -> None:
    await seed_customer(store, "c-1")
    await seed_customer(store, "c-2")
    await close_billing_period(store, clock, SETTINGS, "2026-02")
    await close_billing_period(store, clock, SETTINGS, PERIOD)
    await close_billing_period(store, clock, SETTINGS, "2026-02")
    invoices = await issued(store)
    assert sorted(i.number for i in invoices) == [f"INV-00000{n}" for n in range(1, 5)]
    assert len({i.invoice_id for i in invoices}) == 4
    assert all(isinstance(i.invoice_id, uuid.UUID) for i in invoices)


async def test_concurrent_bill_runs_of_two_periods_share_one_gapless_series(store, clock) -> None:
    customers = [f"c-{n:02d}" for n in range(8)]
    for c in customers:
        await seed_customer(store, c)
    # Different periods mean different invoices racing for the next number of one series.
    await asyncio.gather(
        *(close_billing_period(store, clock, SETTINGS, p) for p in ["2026-02", PERIOD] * 2)
    )
    invoices = await issued(store)
    assert len(invoices) == 2 * len(customers)
    assert len({(i.customer_id, i.period) for i in invoices}) == len(invoices)
    numbers = await series_numbers(store)
    assert [n.sequence for n in numbers] == list(range(1, len(invoices) + 1))
    assert sorted(i.number for i in invoices) == sorted(n.number for n in numbers)


async def test_a_dry_run_previews_every_invoice_and_writes_nothing(store, clock) -> None:
    for customer_id in ("c-1", "c-2"):
        await seed_customer(store, customer_id)
    head = await store.head_position()
    report = await close_billing_period(store, clock, SETTINGS, PERIOD, dry_run=True)
    assert report.dry_run and report.issued == [] and report.already_issued == []
    # 30.00 + VAT 15 % each
    assert [(p.customer_id, p.subtotal, p.tax_total, p.total) for p in report.previews] == [
        ("c-1", "30.00", "4.50", "34.50"),
        ("c-2", "30.00", "4.50", "34.50"),
    ]
    assert await store.head_position() == head  # no number taken, no invoice
    real = await close_billing_period(store, clock, SETTINGS, PERIOD)
    assert real.issued == ["INV-000001", "INV-000002"]
    assert [i.total.amount for i in await issued(store)] == [Decimal("34.50")] * 2


async def test_one_customers_unexpected_failure_is_reported_and_the_run_goes_on(
    store, clock
) -> None:
    for customer_id in ("c-1", "c-2", "c-3"):
        await seed_customer(store, customer_id)
    # c-2's stream ends with an event that is no customer detail: drafting it fails
    await put(
        store,
        customer_stream("c-2"),
        PlanDefined(
            plan_id="stray",
            name="Stray",
            monthly_fee=Money.of("1.00", "USD"),
            included_bytes=0,
            overage_price=Money.of("1.00", "USD"),
        ),
    )
    report = await close_billing_period(store, clock, SETTINGS, PERIOD)
    assert list(report.failed) == ["c-2"]
    assert report.failed["c-2"] == (
        "ValueError: customer stream ends with PlanDefined, not the customer's details"
    )
    assert report.issued == ["INV-000001", "INV-000002"]
    assert sorted(i.customer_id for i in await issued(store)) == ["c-1", "c-3"]
    # numbers stay gapless: the failed customer took none
    assert [n.sequence for n in await series_numbers(store)] == [1, 2]


async def test_a_customer_whose_region_has_no_rule_in_force_is_skipped_with_the_reason(
    store, clock
) -> None:
    await seed_customer(store, "c-1")
    await put(
        store,
        customer_stream("c-2"),
        CustomerRegistered(customer_id="c-2", name="B", email="b@example.com", tax_region="XX"),
    )
    await put(
        store,
        subscription_stream("sub-c-2"),
        SubscriptionStarted(
            subscription_id="sub-c-2",
            customer_id="c-2",
            plan_id="home",
            radius_username="c-2",
            started_on=date(2026, 1, 1),
        ),
    )
    report = await close_billing_period(store, clock, SETTINGS, PERIOD)
    assert report.skipped == {
        "c-2": "no tax rule in force for region 'XX' on 2026-03-31: set one for it or a level"
        ' above it (a rate of "0" for a region that pays no tax)'
    }
    assert report.issued == ["INV-000001"]


async def test_a_yearly_number_format_counts_each_year_from_one(store, clock) -> None:
    yearly = BillingSettings(timezone=TZ, number_format="{series}/{year}/{seq:05d}")
    for customer_id in ("c-1", "c-2"):
        await seed_customer(store, customer_id, started_on=date(2026, 11, 1))
    december = await close_billing_period(store, clock, yearly, "2026-12")
    january = await close_billing_period(store, clock, yearly, "2027-01")
    assert december.issued == ["INV/2026/00001", "INV/2026/00002"]
    assert january.issued == ["INV/2027/00001", "INV/2027/00002"]
    again = await close_billing_period(store, clock, yearly, "2026-12")
    assert again.issued == [] and again.already_issued == december.issued
    series = [e.decode() for e in await store.read_stream(invoice_series_stream("INV-2027"))]
    assert [(n.series, n.sequence) for n in series] == [("INV-2027", 1), ("INV-2027", 2)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("number_format", "why"),
    [
        ("{series}-{year}", "no {seq}"),
        ("{year}-{seq:06d}", "no {series}"),
        ("{series}-{month}-{seq}", "fields: series, year, seq"),
        ("{series} {seq}", "letters, digits"),
        ("{series}{seq:x>200}", "at most 100"),
    ],
)
def test_a_number_format_that_cannot_make_numbers_is_refused(number_format: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        BillingSettings(timezone=TZ, number_format=number_format)


def test_invoices_and_credit_notes_may_not_share_a_series() -> None:
    with pytest.raises(ValueError, match="collide"):
        BillingSettings(timezone=TZ, series="DOC", credit_note_series="DOC")
