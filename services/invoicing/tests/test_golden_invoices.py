"""Golden invoices the issue lists, computed by hand here and billed by the real bill run on a
real ledger: a daylight-saving month in America/New_York with a mid-cycle start, and overage
on a GiB plan against a GB plan."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from invoicing.application.audit import verify_invoices
from invoicing.application.close_billing_period import close_billing_period
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    GIBIBYTE,
    GIGABYTE,
    PlanDefined,
    plan_stream,
)
from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from tests.fixtures.billing_ledger import put, seed_customer, seed_plan_and_tax, use

pytestmark = pytest.mark.integration

NEW_YORK = ZoneInfo("America/New_York")


async def test_a_daylight_saving_month_in_new_york_with_a_gib_plan_and_a_gb_plan(
    tmp_path: Path,
) -> None:
    """March 2026 in New York (clocks go forward on the 8th) is 31 days whatever its hours.

    c-gib: GiB plan, 10 GiB included, 2.00 per started GiB, 30.00 a month, started on the 10th:
      22 of 31 days: 30.00 x 22 / 31 = 21.2903... -> 21.29
      10 GiB + 1 byte used: 1 started GiB over -> 2.00
      subtotal 23.29, VAT 15 % 3.4935 -> 3.49, total 26.78
    c-gb: the GB plan ("home": 10 GB included, 2.00 per started GB), the whole month:
      10 GiB + 1 byte = 10,737,418,241 bytes, 737,418,241 over 10 GB: 1 started GB -> 2.00
      subtotal 32.00, VAT 4.80, total 36.80
    The run at 03:00 on 1 April in New York (07:00 UTC, EDT) issues on 1 April, due the 15th.
    """
    store = SQLiteEventStore(tmp_path / "ledger.db")
    try:
        await seed_plan_and_tax(store)
        await put(
            store,
            plan_stream("gib"),
            PlanDefined(
                plan_id="gib",
                name="Binary",
                monthly_fee=Money.of("30.00", "USD"),
                included_bytes=10 * GIBIBYTE,
                overage_price=Money.of("2.00", "USD"),
                overage_unit_bytes=GIBIBYTE,
            ),
        )
        await seed_customer(store, "c-gb", date(2026, 1, 1))
        await seed_customer(store, "c-gib", date(2026, 3, 10), plan_id="gib")
        for customer in ("c-gb", "c-gib"):
            await use(store, customer, "2026-03", 10 * GIBIBYTE + 1, 0)
        settings = BillingSettings(timezone=NEW_YORK)
        run_at = datetime(2026, 4, 1, 3, 0, tzinfo=NEW_YORK)
        assert run_at.astimezone(UTC) == datetime(2026, 4, 1, 7, 0, tzinfo=UTC)
        report = await close_billing_period(store, FixedClock(run_at), settings, "2026-03")
        assert not report.skipped and not report.failed
        invoices = {i.customer_id: i for i in await all_events_of(store, InvoiceIssued)}

        gib = invoices["c-gib"]
        assert [(line.quantity, line.unit, line.amount) for line in gib.lines] == [
            (Decimal("0.7097"), "month", Money.of("21.29", "USD")),
            (Decimal(1), "GiB", Money.of("2.00", "USD")),
        ]
        assert (gib.subtotal, gib.tax_total, gib.total) == (
            Money.of("23.29", "USD"),
            Money.of("3.49", "USD"),
            Money.of("26.78", "USD"),
        )
        gb = invoices["c-gb"]
        assert [(line.quantity, line.unit, line.amount) for line in gb.lines][1] == (
            Decimal(1),
            "GB",
            Money.of("2.00", "USD"),
        )
        assert 10 * GIBIBYTE + 1 - 10 * GIGABYTE == 737_418_241
        assert gb.total == Money.of("36.80", "USD")
        for invoice in (gb, gib):
            assert invoice.issued_at.astimezone(NEW_YORK).date() == date(2026, 4, 1)
            assert invoice.due_on == date(2026, 4, 1) + timedelta(days=14)
        assert (await verify_invoices(store, settings)).findings == []
    finally:
        await store.close()
