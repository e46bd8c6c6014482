"""Buckets: the split of a delta by time (pure), and golden cases rated on the real ledger."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispbill_core.contracts.accounts import (
    PlanVersionPublished,
    SubscriptionPlanChanged,
    SubscriptionResumed,
    SubscriptionSuspended,
    TimeBand,
    plan_stream,
)
from ispbill_core.contracts.invoicing import invoice_stream
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import AcctStatus
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.service_history import ServiceHistory
from ispbill_core.time_bands import band_at, counted_octets
from rating.application.rate_accounting_record import RatingSettings
from rating.application.rate_batch import RatingCache, rate_accounting_batch
from rating.domain.buckets import MAX_SPAN, Bucket, DayMemo, split_usage
from tests.fixtures.radius import (
    GIGAWORD,
    NIGHT,
    START,
    STARTED,
    UTC_SETTINGS,
    message,
    plan,
    record,
    subscribed,
)

NEW_YORK = ZoneInfo("America/New_York")
DHAKA = ZoneInfo("Asia/Dhaka")


# -- the split, pure ------------------------------------------------------------------------
@pytest.mark.unit
def test_a_delta_across_local_midnight_on_a_daylight_saving_day_is_split_by_time() -> None:
    # 1 November 2026: New York's clocks go back at 02:00 local; the month begins at local
    # midnight, 04:00Z (still EDT, UTC-4). 23:00Z..06:00Z: 5 of 7 hours are October's.
    pieces = split_usage(
        datetime(2026, 10, 31, 23, tzinfo=UTC),
        datetime(2026, 11, 1, 6, tzinfo=UTC),
        7_000,
        700,
        NEW_YORK,
    )
    assert [(p.bucket.period, p.input_octets, p.output_octets) for p in pieces] == [
        ("2026-10", 5_000, 500),
        ("2026-11", 2_000, 200),
    ]
    assert pieces[0].ended_at == datetime(2026, 11, 1, 4, tzinfo=UTC) - timedelta(microseconds=1)
    assert pieces[1].started_at == datetime(2026, 11, 1, 4, tzinfo=UTC)


@pytest.mark.unit
def test_dhaka_has_no_daylight_saving_and_cuts_the_month_at_18_00_utc() -> None:
    pieces = split_usage(
        datetime(2026, 10, 31, 17, tzinfo=UTC),
        datetime(2026, 10, 31, 20, tzinfo=UTC),
        3_000,
        0,
        DHAKA,
    )
    assert [(p.bucket.period, p.input_octets) for p in pieces] == [
        ("2026-10", 1_000),
        ("2026-11", 2_000),
    ]


@pytest.mark.unit
def test_a_free_night_band_takes_its_share_and_counts_nothing() -> None:
    history = ServiceHistory.of(STARTED, [])
    plans = {"home": [plan(bands=(NIGHT,))]}
    # 21:00..23:00 UTC: one hour standard, one hour night
    pieces = split_usage(
        datetime(2026, 3, 10, 21, tzinfo=UTC),
        datetime(2026, 3, 10, 23, tzinfo=UTC),
        1_000,
        1_000,
        ZoneInfo("UTC"),
        history,
        plans,
    )
    assert [(p.bucket.band, p.input_octets) for p in pieces] == [("", 500), ("night", 500)]
    assert pieces[1].bucket == Bucket("2026-03", "night", "home", 1, False)
    assert counted_octets((NIGHT,), "night", 500) == 0
    assert counted_octets((NIGHT,), "", 500) == 500


@pytest.mark.unit
def test_a_plan_change_and_a_suspension_start_at_local_midnight() -> None:
    history = ServiceHistory.of(
        STARTED,
        [
            SubscriptionPlanChanged(
                subscription_id="sub-1",
                from_plan_id="home",
                plan_id="pro",
                effective_on=date(2026, 3, 11),
            ),
            SubscriptionSuspended(
                subscription_id="sub-1", effective_on=date(2026, 3, 12), reason="unpaid"
            ),
            SubscriptionResumed(subscription_id="sub-1", effective_on=date(2026, 3, 13), reason=""),
        ],
    )
    plans = {
        "home": [plan()],
        "pro": [
            plan("pro"),
            PlanVersionPublished(
                **plan("pro").model_dump(), version=2, effective_from=date(2026, 3, 12)
            ),
        ],
    }
    pieces = split_usage(
        datetime(2026, 3, 10, 12, tzinfo=DHAKA),
        datetime(2026, 3, 13, 12, tzinfo=DHAKA),
        72,
        0,
        DHAKA,
        history,
        plans,
    )
    assert [
        (p.bucket.plan_id, p.bucket.plan_version, p.bucket.suspended, p.input_octets)
        for p in pieces
    ] == [
        ("home", 1, False, 12),
        ("pro", 1, False, 24),
        ("pro", 2, True, 24),
        ("pro", 2, False, 12),
    ]


@pytest.mark.unit
def test_a_backwards_span_is_one_piece_at_the_records_time() -> None:
    at = datetime(2026, 3, 10, 12, tzinfo=UTC)  # a Stop older than the last interim's time
    [piece] = split_usage(at + timedelta(hours=1), at, 5, 6, ZoneInfo("UTC"))
    assert (piece.started_at, piece.ended_at, piece.input_octets, piece.output_octets) == (
        at,
        at,
        5,
        6,
    )


@pytest.mark.unit
def test_a_span_of_years_is_rated_whole_over_its_last_year() -> None:
    end = datetime(2026, 3, 10, 12, tzinfo=UTC)
    pieces = split_usage(datetime(1, 1, 1, tzinfo=UTC), end, 10**15, 1, ZoneInfo("UTC"))
    assert sum(p.input_octets for p in pieces) == 10**15
    assert pieces[0].started_at == end - MAX_SPAN


@pytest.mark.unit
def test_band_edges_wrap_past_midnight_and_the_first_listed_band_wins() -> None:
    peak = TimeBand(name="peak", start="18:00", end="23:00", multiplier=Decimal("1.5"))
    bands = (NIGHT, peak)
    assert band_at(bands, datetime(2026, 1, 1, 23, 30).time()) == "night"
    assert band_at(bands, datetime(2026, 1, 1, 5, 59).time()) == "night"
    assert band_at(bands, datetime(2026, 1, 1, 6, 0).time()) == ""
    assert band_at(bands, datetime(2026, 1, 1, 22, 0).time()) == "night"
    assert band_at(bands, datetime(2026, 1, 1, 21, 0).time()) == "peak"
    assert counted_octets(bands, "peak", 3) == 4  # 4.5 rounded down


_MEMOS: dict[tuple[str, bool], DayMemo] = {}
zones = st.sampled_from([ZoneInfo("UTC"), NEW_YORK, DHAKA, ZoneInfo("Australia/Lord_Howe")])
moments = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(
    moments,
    st.integers(min_value=0, max_value=90 * 86_400_000_000),
    st.integers(min_value=0, max_value=2**64),
    st.integers(min_value=0, max_value=2**64),
    zones,
    st.booleans(),
)
def test_pieces_add_up_to_the_delta_and_each_lies_in_its_bucket(
    start: datetime, micros: int, i: int, o: int, tz: ZoneInfo, banded: bool
) -> None:
    end = start + timedelta(microseconds=micros)
    history = ServiceHistory.of(STARTED, [])
    bands = (NIGHT, TimeBand(name="lunch", start="12:00", end="13:30", multiplier=Decimal(2)))
    plans = {"home": [plan(bands=bands if banded else ())]}
    pieces = split_usage(start, end, i, o, tz, history, plans)
    assert sum(p.input_octets for p in pieces) == i
    assert sum(p.output_octets for p in pieces) == o
    assert pieces == split_usage(start, end, i, o, tz, history, plans)  # deterministic
    # the days a caller keeps from earlier calls (rating keeps them per subscription) change
    # nothing
    memo = _MEMOS.setdefault((tz.key, banded), {})
    assert pieces == split_usage(start, end, i, o, tz, history, plans, memo=memo)
    for p in pieces:
        assert start <= p.started_at <= p.ended_at <= end
        for moment in (p.started_at, p.ended_at):
            local = moment.astimezone(tz)
            assert f"{local.year:04d}-{local.month:02d}" == p.bucket.period
            if p.started_at < p.ended_at:
                assert p.bucket.band == band_at(bands if banded else (), local.time())
    for a, b in pairwise(pieces):
        assert a.ended_at < b.started_at
        # the same bucket twice only with a piece of no bytes (dropped) between them
        assert a.bucket != b.bucket or a.ended_at + timedelta(microseconds=1) < b.started_at


# -- golden cases on the ledger -------------------------------------------------------------
@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


@pytest.mark.integration
async def test_a_session_across_the_month_end_in_new_york_bills_each_month_its_share(
    store,
) -> None:
    await subscribed(store, plan())
    start = datetime(2026, 11, 1, 2, tzinfo=UTC)  # 22:00 local on 31 October
    records = [
        record(status, seconds, n, n // 10, start=start)
        for status, seconds, n in (
            (AcctStatus.START, 0, 0),
            (AcctStatus.INTERIM_UPDATE, 3600, 1_000_000),  # 22:00-23:00 local: October
            (AcctStatus.STOP, 4 * 3600, 4_000_000),  # 23:00-02:00 local: 1 h October, 2 h November
        )
    ]
    settings_ = RatingSettings(timezone=NEW_YORK)
    await rate_accounting_batch(store, settings_, [message(r) for r in records])
    usage = await all_events_of(store, UsageRated)
    by_period: dict[str, int] = {}
    for u in usage:
        by_period[u.period] = by_period.get(u.period, 0) + u.input_octets
    assert by_period == {"2026-10": 2_000_000, "2026-11": 2_000_000}
    # delivered again: nothing new
    await rate_accounting_batch(store, settings_, [message(r) for r in records])
    assert len(await all_events_of(store, UsageRated)) == len(usage)


@pytest.mark.integration
async def test_a_plan_change_mid_session_rates_each_day_on_its_plan(store) -> None:
    change = SubscriptionPlanChanged(
        subscription_id="sub-1", from_plan_id="home", plan_id="pro", effective_on=date(2026, 3, 11)
    )
    await subscribed(store, plan(), change)
    await store.append(
        plan_stream("pro"),
        [new_event(plan("pro"), id=deterministic_id("plan", "pro"), occurred_at=START)],
        ANY,
    )
    start = datetime(2026, 3, 10, 22, tzinfo=UTC)
    records = [
        record(AcctStatus.START, 0, 0, 0, start=start),
        record(AcctStatus.STOP, 4 * 3600, 400, 40, start=start),
    ]
    await rate_accounting_batch(
        store, RatingSettings(ZoneInfo("UTC")), [message(r) for r in records]
    )
    usage = await all_events_of(store, UsageRated)
    assert sorted((u.plan_id, u.input_octets, u.output_octets) for u in usage) == [
        ("home", 200, 20),
        ("pro", 200, 20),
    ]


@pytest.mark.integration
async def test_a_night_band_and_gigawords(store) -> None:
    await subscribed(store, plan(bands=(NIGHT,)))
    start = datetime(2026, 3, 10, 21, tzinfo=UTC)
    total = 3 * GIGAWORD + 7
    records = [
        record(AcctStatus.START, 0, 0, 0, start=start),
        record(AcctStatus.STOP, 2 * 3600, total, 0, start=start),
    ]
    await rate_accounting_batch(
        store, RatingSettings(ZoneInfo("UTC")), [message(r) for r in records]
    )
    usage = await all_events_of(store, UsageRated)
    bands = {u.band: u.input_octets for u in usage}
    assert bands == {"": total // 2, "night": total - total // 2}


# -- any order, any duplicates, interims dropped ---------------------------------------------
@st.composite
def sessions(draw: st.DrawFn) -> tuple[list, list, int, int]:
    start = draw(moments)
    steps = draw(st.integers(min_value=1, max_value=6))
    records = [record(AcctStatus.START, 0, 0, 0, start=start)]
    seconds = cum_in = cum_out = 0
    for i in range(steps):
        seconds += draw(st.integers(min_value=1, max_value=3 * 86_400))
        cum_in += draw(st.integers(min_value=0, max_value=3 * GIGAWORD))
        cum_out += draw(st.integers(min_value=0, max_value=3 * GIGAWORD))
        status = AcctStatus.STOP if i == steps - 1 else AcctStatus.INTERIM_UPDATE
        records.append(record(status, seconds, cum_in, cum_out, start=start))
    interims = records[1:-1]
    dropped = draw(st.sets(st.integers(min_value=0, max_value=max(0, len(interims) - 1))))
    kept = [records[0], *(r for n, r in enumerate(interims) if n not in dropped), records[-1]]
    extra = draw(st.lists(st.sampled_from(kept), max_size=4))
    return kept, draw(st.permutations(kept + extra)), cum_in, cum_out


@pytest.mark.integration
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sessions(), zones, st.integers(min_value=1, max_value=5))
def test_buckets_add_up_to_the_stop_in_any_order_with_duplicates_and_dropped_interims(
    case, tz: ZoneInfo, batch_size: int
) -> None:
    _, delivered, stop_in, stop_out = case

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteEventStore(Path(tmp) / "ledger.db", synchronous="OFF")
            try:
                await subscribed(store, plan(bands=(NIGHT,)))
                settings_ = RatingSettings(timezone=tz)
                cache = RatingCache()
                for _ in range(2):  # the whole delivery twice, as after a restart
                    for n in range(0, len(delivered), batch_size):
                        chunk = delivered[n : n + batch_size]
                        await rate_accounting_batch(
                            store, settings_, [message(r) for r in chunk], cache
                        )
                usage = await all_events_of(store, UsageRated)
                assert sum(u.input_octets for u in usage) == stop_in
                assert sum(u.output_octets for u in usage) == stop_out
                for u in usage:
                    local = u.occurred_at.astimezone(tz)
                    assert u.period == f"{local.year:04d}-{local.month:02d}"
                    assert u.started_at is not None and u.started_at <= u.occurred_at
            finally:
                await store.close()

    asyncio.run(scenario())


@pytest.mark.integration
async def test_usage_rated_into_an_invoiced_period_is_marked_late(store) -> None:
    await subscribed(store, plan())
    start = datetime(2026, 3, 31, 23, tzinfo=UTC)
    first = [record(AcctStatus.START, 0, 0, 0, start=start)]
    await rate_accounting_batch(store, UTC_SETTINGS, [message(r) for r in first])
    await store.append(
        invoice_stream("c-1", "2026-03"),
        [new_event(STARTED, id=deterministic_id("invoice"), occurred_at=START)],  # any event
        ANY,
    )
    # 23:00-01:00: half in the invoiced March, half in April
    late = [record(AcctStatus.STOP, 7200, 1_000, 0, start=start)]
    await rate_accounting_batch(store, UTC_SETTINGS, [message(r) for r in late])
    usage = await all_events_of(store, UsageRated)
    assert sorted((u.period, u.input_octets, u.late) for u in usage) == [
        ("2026-03", 500, True),
        ("2026-04", 500, False),
    ]
