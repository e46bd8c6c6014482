"""The scheduled bill run: a durable timer per period, due on the next period's first day at
ISPBILL_BILL_RUN_AT in the ISP's time zone; firing it bills the period and schedules the next."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from invoicing.application.bill_run_schedule import (
    BILL_RUN_KIND,
    BillRunSchedule,
    bill_run_due,
)
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from ispbill_core.periods import BillingPeriod
from ispbill_core.timers.runner import TimerRunner
from ispbill_core.timers.sqlite import SQLiteTimers
from tests.fixtures.billing_ledger import seed_customer, seed_plan_and_tax

DHAKA = ZoneInfo("Asia/Dhaka")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.unit
def test_a_period_is_due_on_the_next_first_day_at_the_local_hour() -> None:
    settings = BillingSettings(timezone=DHAKA)
    assert bill_run_due(BillingPeriod(2026, 3), settings) == datetime(2026, 3, 31, 20, tzinfo=UTC)
    assert bill_run_due(BillingPeriod(2026, 12), settings) == datetime(2026, 12, 31, 20, tzinfo=UTC)


@pytest.mark.unit
def test_daylight_saving_in_new_york() -> None:
    """1 November 2026 is the day New York falls back (02:00 EDT -> 01:00 EST): 01:30 happens
    twice and the run takes the first (EDT); 03:00 happens once, in EST."""
    early = BillingSettings(timezone=NEW_YORK, bill_run_at=time(1, 30))
    assert bill_run_due(BillingPeriod(2026, 10), early) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    late = BillingSettings(timezone=NEW_YORK, bill_run_at=time(3, 0))
    assert bill_run_due(BillingPeriod(2026, 10), late) == datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    # March 2026 in New York: DST from the 8th; April's first day at 02:00 is EDT
    assert bill_run_due(BillingPeriod(2026, 3), late) == datetime(2026, 4, 1, 7, 0, tzinfo=UTC)


@pytest.mark.integration
async def test_the_timer_bills_the_period_and_schedules_the_next(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    timers = SQLiteTimers(store)
    try:
        await seed_plan_and_tax(store, included_gb=1)
        await seed_customer(store, "c1")
        clock = FixedClock(datetime(2026, 3, 15, 12, tzinfo=UTC))
        settings = BillingSettings(timezone=DHAKA)
        schedule = BillRunSchedule(store, timers, clock, settings)
        assert await schedule.ensure_scheduled() == BillingPeriod(2026, 3)
        assert await schedule.ensure_scheduled() == BillingPeriod(2026, 3)  # twice: one timer
        timer = await timers.get("bill-run-2026-03")
        assert timer is not None and timer.kind == BILL_RUN_KIND
        assert timer.due_at == datetime(2026, 3, 31, 20, tzinfo=UTC)
        runner = TimerRunner(timers, schedule.timer_handlers(), clock)
        assert await runner.run_once() == 0  # not due yet
        clock.set(datetime(2026, 3, 31, 20, 0, 1, tzinfo=UTC))  # 02:00:01 on 1 April in Dhaka
        assert await runner.run_once() == 1
        [invoice] = await all_events_of(store, InvoiceIssued)
        assert (invoice.period, invoice.total) == ("2026-03", Money.of("34.50", "USD"))
        assert await timers.get("bill-run-2026-03") is None
        following = await timers.get("bill-run-2026-04")
        assert following is not None and following.due_at == datetime(2026, 4, 30, 20, tzinfo=UTC)
        # off: nothing scheduled by a process that starts
        off = BillRunSchedule(store, timers, clock, dataclasses.replace(settings, bill_run_at=None))
        assert await off.ensure_scheduled() is None
    finally:
        await timers.close()
        await store.close()
