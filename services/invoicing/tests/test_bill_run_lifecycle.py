"""The bill run charges a subscription's lifecycle by day: plan changes, suspensions, holds,
termination, a start in the future, plan versions; on the real SQLite ledger."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from invoicing.application.close_billing_period import close_billing_period
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    GIGABYTE,
    CustomerDetailsChanged,
    CustomerRegistered,
    PlanDefined,
    PlanVersionPublished,
    RadiusUsernameChanged,
    SubscriptionHoldPlaced,
    SubscriptionPlanChanged,
    SubscriptionResumed,
    SubscriptionStarted,
    SubscriptionSuspended,
    SubscriptionTerminated,
    TimeBand,
    customer_stream,
    plan_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import (
    InvoiceIssued,
    LineKind,
    TaxRateSet,
    invoice_stream,
    tax_region_stream,
)
from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.events import DomainEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money

pytestmark = pytest.mark.integration

SETTINGS = BillingSettings(timezone=ZoneInfo("Asia/Dhaka"))
MARCH = "2026-03"  # 31 days: a fee of 31.00 is 1.00 a day
RUN_AT = datetime(2026, 4, 1, 3, 0, tzinfo=UTC)


async def put(store: SQLiteEventStore, stream: str, event: DomainEvent) -> None:
    await store.append(
        stream,
        [new_event(event, id=deterministic_id("seed", stream, event), occurred_at=RUN_AT)],
        ANY,
    )


def plan(plan_id: str, fee: str, included_gb: int = 10) -> PlanDefined:
    return PlanDefined(
        plan_id=plan_id,
        name=plan_id.title(),
        monthly_fee=Money.of(fee, "USD"),
        included_bytes=included_gb * GIGABYTE,
        overage_price=Money.of("2.00", "USD"),
    )


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    await put(s, plan_stream("home"), plan("home", "31.00"))
    await put(s, plan_stream("fast"), plan("fast", "62.00"))
    # the region's explicit rule that it pays no tax (a region without one is not billed)
    await put(s, tax_region_stream("XX"), TaxRateSet(region="XX", tax_name="untaxed", rate=0))
    await put(
        s,
        customer_stream("c-1"),
        CustomerRegistered(
            customer_id="c-1", name="Alice", email="alice@example.com", tax_region="XX"
        ),
    )
    yield s
    await s.close()


async def start(
    store: SQLiteEventStore,
    *changes: DomainEvent,
    sub_id: str = "s-1",
    started_on: date = date(2026, 1, 1),
    plan_id: str = "home",
) -> None:
    stream = subscription_stream(sub_id)
    await put(
        store,
        stream,
        SubscriptionStarted(
            subscription_id=sub_id,
            customer_id="c-1",
            plan_id=plan_id,
            radius_username=f"u-{sub_id}",
            started_on=started_on,
        ),
    )
    for change in changes:
        await put(store, stream, change)


async def bill(store: SQLiteEventStore, period: str = MARCH) -> InvoiceIssued | None:
    await close_billing_period(store, FixedClock(RUN_AT), SETTINGS, period)
    recorded = await store.read_stream(invoice_stream("c-1", period))
    if not recorded:
        return None
    invoice = recorded[0].decode()
    assert isinstance(invoice, InvoiceIssued)
    return invoice


def usd(amount: str) -> Money:
    return Money.of(amount, "USD")


async def test_a_whole_month_without_changes_is_the_monthly_fee(store) -> None:
    await start(store)
    invoice = await bill(store)
    assert invoice is not None and invoice.total == usd("31.00")
    assert [line.quantity for line in invoice.lines] == [1]


async def test_a_plan_change_mid_month_charges_old_days_on_the_old_plan_new_on_the_new(
    store,
) -> None:
    change = SubscriptionPlanChanged(
        subscription_id="s-1", from_plan_id="home", plan_id="fast", effective_on=date(2026, 3, 11)
    )
    await start(store, change)
    invoice = await bill(store)
    assert invoice is not None
    # 1-10 March on home (10 x 1.00), 11-31 March on fast (21 x 2.00)
    assert [line.amount for line in invoice.lines] == [usd("10.00"), usd("42.00")]
    assert "Plan Home" in invoice.lines[0].description
    assert "2026-03-01 to 2026-03-10" in invoice.lines[0].description
    assert "Plan Fast" in invoice.lines[1].description
    assert invoice.total == usd("52.00")


async def test_a_change_at_the_next_cycle_leaves_this_month_on_the_old_plan(store) -> None:
    change = SubscriptionPlanChanged(
        subscription_id="s-1", from_plan_id="home", plan_id="fast", effective_on=date(2026, 4, 1)
    )
    await start(store, change)
    assert (await bill(store)).total == usd("31.00")  # type: ignore[union-attr]
    april = await bill(store, "2026-04")
    assert april is not None and april.total == usd("62.00")


async def test_suspended_days_are_not_charged(store) -> None:
    await start(
        store,
        SubscriptionSuspended(subscription_id="s-1", effective_on=date(2026, 3, 6), reason="abuse"),
        SubscriptionResumed(subscription_id="s-1", effective_on=date(2026, 3, 16), reason="ok"),
    )
    invoice = await bill(store)
    assert invoice is not None
    # 6-15 March suspended: 5 + 16 days charged, in two lines
    assert [line.amount for line in invoice.lines] == [usd("5.00"), usd("16.00")]
    assert invoice.total == usd("21.00")


async def test_a_suspension_not_resumed_is_not_charged_to_the_end_of_the_month(store) -> None:
    await start(
        store,
        SubscriptionSuspended(subscription_id="s-1", effective_on=date(2026, 3, 21), reason="x"),
    )
    assert (await bill(store)).total == usd("20.00")  # type: ignore[union-attr]
    assert await bill(store, "2026-04") is None  # suspended all April: no invoice


async def test_vacation_hold_days_are_not_charged(store) -> None:
    await start(
        store,
        SubscriptionHoldPlaced(
            subscription_id="s-1",
            hold_from=date(2026, 3, 10),
            hold_until=date(2026, 3, 19),
            reason="travel",
        ),
    )
    invoice = await bill(store)
    assert invoice is not None
    assert [line.amount for line in invoice.lines] == [usd("9.00"), usd("12.00")]
    assert invoice.total == usd("21.00")


async def test_the_termination_date_is_the_last_day_charged_and_nothing_after(store) -> None:
    await start(
        store,
        SubscriptionTerminated(subscription_id="s-1", effective_on=date(2026, 3, 15), reason="x"),
    )
    invoice = await bill(store)
    assert invoice is not None and invoice.total == usd("15.00")
    assert "prorated 15 of 31 days" in invoice.lines[0].description
    assert await bill(store, "2026-04") is None


async def test_a_subscription_starting_in_the_future_is_not_billed_before_it_starts(
    store,
) -> None:
    await start(store, started_on=date(2026, 3, 20))
    assert await bill(store, "2026-02") is None
    march = await bill(store)
    assert march is not None and march.total == usd("12.00")  # 20-31 March


async def test_a_price_change_applies_from_its_effective_date_and_prices_the_overage(
    store,
) -> None:
    await put(
        store,
        plan_stream("home"),
        PlanVersionPublished(
            plan_id="home",
            version=2,
            effective_from=date(2026, 3, 16),
            name="Home",
            monthly_fee=usd("62.00"),
            included_bytes=1 * GIGABYTE,
            overage_price=usd("3.00"),
            overage_increment=Decimal("0.5"),
        ),
    )
    await start(store)
    await put(
        store,
        usage_stream("c-1", MARCH),
        UsageRated(
            customer_id="c-1",
            subscription_id="s-1",
            period=MARCH,
            session_key="k",
            record_id=deterministic_id("r"),
            input_octets=2 * GIGABYTE,
            output_octets=GIGABYTE // 5,
            occurred_at=datetime(2026, 3, 20, tzinfo=UTC),
        ),
    )
    invoice = await bill(store)
    assert invoice is not None
    recurring = [line for line in invoice.lines if line.kind is LineKind.RECURRING]
    # 1-15 March at 31.00 a month, 16-31 March at 62.00: 15.00 + 32.00
    assert [line.amount for line in recurring] == [usd("15.00"), usd("32.00")]
    [usage] = [line for line in invoice.lines if line.kind is LineKind.USAGE]
    # version 2 in force at the month's end: 1 GB included, 1.2 GB over, per started 0.5 GB
    assert usage.quantity == Decimal("1.5") and usage.amount == usd("4.50")
    # the usage billed: the stream's first (and only) event; later usage would be late
    assert invoice.usage_through == 0
    assert invoice.total == usd("51.50")


async def test_usage_in_a_free_band_is_not_billed_and_a_multiplier_counts(store) -> None:
    bands = (
        TimeBand(name="night", start="01:00", end="07:00", multiplier="free"),
        TimeBand(name="peak", start="19:00", end="23:00", multiplier=Decimal("1.5")),
    )
    await put(
        store,
        plan_stream("banded"),
        plan("banded", "31.00", included_gb=1).model_copy(
            update={"plan_id": "banded", "time_bands": bands}
        ),
    )
    await start(store, plan_id="banded")
    for n, (band, gigabytes) in enumerate((("night", 5), ("peak", 2), ("", 1))):
        await put(
            store,
            usage_stream("c-1", MARCH),
            UsageRated(
                customer_id="c-1",
                subscription_id="s-1",
                period=MARCH,
                session_key="k",
                record_id=deterministic_id("r", n),
                input_octets=gigabytes * GIGABYTE,
                output_octets=0,
                occurred_at=datetime(2026, 3, 20, tzinfo=UTC),
                band=band,
                plan_id="banded",
                plan_version=1,
            ),
        )
    invoice = await bill(store)
    assert invoice is not None
    [usage] = [line for line in invoice.lines if line.kind is LineKind.USAGE]
    # night 5 GB free, peak 2 GB count 3, standard 1: 4 GB counted, 1 included, 3 over
    assert usage.quantity == Decimal(3) and usage.amount == usd("6.00")


async def test_several_subscriptions_of_one_customer_share_one_invoice(store) -> None:
    await start(store, sub_id="s-1")
    await start(store, sub_id="s-2", plan_id="fast", started_on=date(2026, 3, 17))
    invoice = await bill(store)
    assert invoice is not None
    assert [line.amount for line in invoice.lines] == [usd("31.00"), usd("30.00")]


async def test_a_username_change_changes_nothing_billed(store) -> None:
    await start(
        store,
        RadiusUsernameChanged(
            subscription_id="s-1",
            customer_id="c-1",
            old_username="u-s-1",
            new_username="alice",
            effective_on=date(2026, 3, 5),
        ),
    )
    assert (await bill(store)).total == usd("31.00")  # type: ignore[union-attr]


async def test_the_invoice_carries_the_customers_current_details(store) -> None:
    await start(store)
    await put(
        store,
        customer_stream("c-1"),
        CustomerDetailsChanged(
            customer_id="c-1",
            name="Alice Smith",
            email="alice@smith.example",
            tax_region="XX",
            billing_address="1 New Road",
        ),
    )
    invoice = await bill(store)
    assert invoice is not None
    assert (invoice.customer_name, invoice.customer_email, invoice.billing_address) == (
        "Alice Smith",
        "alice@smith.example",
        "1 New Road",
    )
