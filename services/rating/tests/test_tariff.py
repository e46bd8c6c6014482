"""Tariff state: quota thresholds, fair usage and top-ups, followed in ledger order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ispbill_core.contracts.accounts import (
    FairUsageThreshold,
    TopUpPurchased,
    subscription_topups_stream,
)
from ispbill_core.contracts.rating import FairUsageLimitReached, QuotaThresholdReached
from ispbill_core.contracts.usage_collector import AcctStatus
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from rating.application.rate_batch import rate_accounting_batch
from rating.application.track_tariff import TARIFF_TYPES, TariffTracker
from tests.fixtures.radius import NIGHT, UTC_SETTINGS, message, plan, record, subscribed

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 10, 8, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


async def use(store: SQLiteEventStore, session: str, *cumulative: int, start=START) -> None:
    """A session whose interims (every 10 minutes) reach these cumulative input octets."""
    records = [record(AcctStatus.START, 0, 0, 0, start=start, acct_session_id=session)]
    records += [
        record(AcctStatus.INTERIM_UPDATE, 600 * (n + 1), c, 0, start=start, acct_session_id=session)
        for n, c in enumerate(cumulative)
    ]
    await rate_accounting_batch(store, UTC_SETTINGS, [message(r) for r in records])


async def follow(store: SQLiteEventStore, tracker: TariffTracker, batch_size: int = 500) -> None:
    """The tracker over the whole ledger, as its subscriber would run it from position 0."""
    position = 0
    while batch := await store.read_all(after=position, limit=batch_size, types=TARIFF_TYPES):
        await tracker.handle_batch(batch)
        position = batch[-1].global_position


async def reached(store: SQLiteEventStore) -> list[tuple[str, int]]:
    quota = [("quota", e.percent) for e in await all_events_of(store, QuotaThresholdReached)]
    fair = [("fair", e.limit_octets) for e in await all_events_of(store, FairUsageLimitReached)]
    return quota + fair


async def test_80_and_100_percent_are_each_emitted_once_even_when_replayed(store) -> None:
    await subscribed(
        store,
        plan(included=1_000).model_copy(
            update={"fair_usage": (FairUsageThreshold(after_bytes=1_500, rate_limit="1M/1M"),)}
        ),
    )
    await use(store, "a", 500, 790)
    await follow(store, TariffTracker(store))
    assert await reached(store) == []
    await use(store, "a", 500, 790, 810, 1_000, 1_200)  # 81 %, then 100 %, and on
    await follow(store, TariffTracker(store), batch_size=1)
    assert await reached(store) == [("quota", 80), ("quota", 100)]
    [at_80, at_100] = await all_events_of(store, QuotaThresholdReached)
    assert (at_80.used_octets, at_80.allowance_octets) == (810, 1_000)
    assert at_100.used_octets == 1_000 and at_100.period == "2026-03"
    # replayed from position 0 by a fresh tracker, and again with big batches: nothing new
    await follow(store, TariffTracker(store))
    await follow(store, TariffTracker(store), batch_size=3)
    await use(store, "b", 400)  # a second session: 1,600 in the period, past the fair-usage limit
    tracker = TariffTracker(store)
    await follow(store, tracker)
    await follow(store, tracker)
    assert await reached(store) == [("quota", 80), ("quota", 100), ("fair", 1_500)]
    [fair] = await all_events_of(store, FairUsageLimitReached)
    assert (fair.rate_limit, fair.used_octets) == ("1M/1M", 1_600)


async def test_a_top_up_mid_period_extends_the_allowance_while_it_is_valid(store) -> None:
    await subscribed(store, plan(included=1_000))
    await use(store, "a", 700)  # 70 %
    bought = TopUpPurchased(
        purchase_id="p-1",
        subscription_id="sub-1",
        customer_id="c-1",
        product_id="extra",
        price=Money.of("5.00", "USD"),
        bytes=1_000,
        valid_from=START + timedelta(minutes=15),
        valid_until=START + timedelta(days=7),
    )
    await store.append(
        subscription_topups_stream("sub-1"),
        [new_event(bought, id=deterministic_id("topup", "p-1"), occurred_at=bought.valid_from)],
        ANY,
    )
    tracker = TariffTracker(store)
    await follow(store, tracker)
    await use(store, "a", 700, 1_500)  # 1,500 of 2,000: 75 %, no threshold
    await follow(store, tracker)
    assert await reached(store) == []
    await use(store, "a", 700, 1_500, 1_700)  # 85 % of 2,000
    await follow(store, tracker)
    [at_80] = await all_events_of(store, QuotaThresholdReached)
    assert (at_80.percent, at_80.used_octets, at_80.allowance_octets) == (80, 1_700, 2_000)
    # a week later the top-up has expired: the next usage is over 100 % of the plan's 1,000
    later = START + timedelta(days=8)
    await use(store, "late", 10, start=later)
    await follow(store, tracker)
    assert await reached(store) == [("quota", 80), ("quota", 100)]


async def test_a_free_night_band_does_not_count_against_the_quota(store) -> None:
    await subscribed(store, plan(included=1_000, bands=(NIGHT,)))
    await use(store, "night", 5_000, start=datetime(2026, 3, 10, 23, tzinfo=UTC))
    await follow(store, TariffTracker(store))
    assert await reached(store) == []
    await use(store, "day", 900, start=datetime(2026, 3, 11, 12, tzinfo=UTC))
    await follow(store, TariffTracker(store))
    assert await reached(store) == [("quota", 80)]
