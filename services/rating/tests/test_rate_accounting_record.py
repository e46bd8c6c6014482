"""rate_accounting_record on the real SQLite ledger: sessions, usage, periods, crash recovery."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispbill_core.contracts.accounts import (
    RadiusUsernameAssigned,
    RadiusUsernameChanged,
    RadiusUsernameReleased,
    SubscriptionStarted,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, NO_STREAM
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from rating.application.rate_accounting_record import (
    RatingSettings,
    nas_sessions_stream,
    rate_accounting_record,
    rate_unmatched_usage,
    rate_unmatched_usage_of_new_username,
    session_index_stream,
)
from rating.application.usage_summary import unmatched_usage, usage_summary
from rating.domain.events import RadiusNasRebooted, RadiusSessionOpened, SessionCountersRecorded
from tests.fixtures.radius import (
    GIGAWORD,
    START,
    UTC_SETTINGS,
    claim,
    message,
    nas_event,
    record,
)

pytestmark = pytest.mark.integration


async def assign(store: SQLiteEventStore, username: str = "alice") -> None:
    """A subscription with the username, started long before the usage of these tests."""
    await claim(
        store,
        SubscriptionStarted(
            subscription_id="sub-1",
            customer_id="c-1",
            plan_id="home",
            radius_username=username,
            started_on=date(2026, 1, 1),
        ),
    )


async def rate_all(
    store: SQLiteEventStore,
    records: Sequence[AccountingRecordReceived],
    settings_: RatingSettings = UTC_SETTINGS,
) -> list[UsageRated]:
    rated = []
    for r in records:
        usage = await rate_accounting_record(store, settings_, message(r))
        if usage is not None:
            rated.append(usage)
    return rated


async def all_usage(store: SQLiteEventStore) -> list[UsageRated]:
    return await all_events_of(store, UsageRated)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[AccountingRecordReceived], list]:
    steps = draw(st.integers(min_value=1, max_value=6))
    records = [record(AcctStatus.START, 0, 0, 0)]
    seconds = cum_in = cum_out = 0
    for i in range(steps):
        seconds += draw(st.integers(min_value=1, max_value=900))
        cum_in += draw(st.integers(min_value=0, max_value=3 * GIGAWORD))
        cum_out += draw(st.integers(min_value=0, max_value=3 * GIGAWORD))
        last = i == steps - 1 and draw(st.booleans())
        status = AcctStatus.STOP if last else AcctStatus.INTERIM_UPDATE
        records.append(record(status, seconds, cum_in, cum_out))
    extra = draw(st.lists(st.sampled_from(records), max_size=4))
    return records, draw(st.permutations(records + extra))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(deliveries())
def test_rated_usage_adds_up_to_the_final_counters_in_any_order_with_duplicates(case) -> None:
    records, delivered = case

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteEventStore(Path(tmp) / "ledger.db", synchronous="OFF")
            try:
                await assign(store)
                await rate_all(store, delivered)
                # The whole delivery again, as a consumer restarting from an old offset would.
                await rate_all(store, delivered)
                usage = await all_usage(store)
                assert sum(u.input_octets for u in usage) == max(r.input_octets for r in records)
                assert sum(u.output_octets for u in usage) == max(r.output_octets for r in records)
                # Each record is rated at most once, and only the ones that added something.
                ids = [u.record_id for u in usage]
                assert len(ids) == len(set(ids))
                assert all(u.input_octets + u.output_octets > 0 for u in usage)
                sessions = {u.session_key for u in usage}
                assert len(sessions) <= 1
            finally:
                await store.close()

    asyncio.run(scenario())


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


async def test_interims_are_rated_as_deltas_into_the_customers_period(store) -> None:
    await assign(store)
    rated = await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0),
            record(AcctStatus.INTERIM_UPDATE, 300, 1_000, 10_000),
            record(AcctStatus.INTERIM_UPDATE, 600, 1_500, 25_000),
        ],
    )
    assert [(u.input_octets, u.output_octets) for u in rated] == [(1_000, 10_000), (500, 15_000)]
    assert {(u.customer_id, u.subscription_id, u.period) for u in rated} == {
        ("c-1", "sub-1", "2026-03")
    }
    summary = await usage_summary(store, "c-1", "2026-03")
    assert (summary.input_octets, summary.output_octets, summary.records) == (1_500, 25_000, 2)


async def test_a_retransmitted_record_is_rated_once(store) -> None:
    await assign(store)
    interim = record(AcctStatus.INTERIM_UPDATE, 300, 1_000, 2_000)
    first = await rate_accounting_record(store, UTC_SETTINGS, message(interim))
    # The second delivery may report the usage again (it cannot tell a retransmission from a
    # redelivery after a crash), but it records nothing new.
    again = await rate_accounting_record(store, UTC_SETTINGS, message(interim))
    assert first is not None
    assert again in (None, first)
    [usage] = await all_usage(store)
    assert (usage.input_octets, usage.output_octets) == (1_000, 2_000)
    assert len(await store.read_stream(f"session-{usage.session_key}")) == 1


async def test_an_older_interim_after_a_newer_one_adds_nothing(store) -> None:
    await assign(store)
    await rate_all(store, [record(AcctStatus.INTERIM_UPDATE, 600, 9_000, 9_000)])
    assert await rate_all(store, [record(AcctStatus.INTERIM_UPDATE, 300, 4_000, 4_000)]) == []
    summary = await usage_summary(store, "c-1", "2026-03")
    assert summary.total_octets == 18_000


async def test_gigaword_sized_counters_survive_the_ledger_exactly(store) -> None:
    await assign(store)
    big_in = 7 * GIGAWORD + 123
    big_out = 2**63 + 5  # beyond a signed 64-bit integer as well
    rated = await rate_all(
        store,
        [
            record(AcctStatus.INTERIM_UPDATE, 60, GIGAWORD - 1, 10),
            record(AcctStatus.INTERIM_UPDATE, 120, big_in, big_out),
        ],
    )
    assert [(u.input_octets, u.output_octets) for u in rated] == [
        (GIGAWORD - 1, 10),
        (big_in - (GIGAWORD - 1), big_out - 10),
    ]
    summary = await usage_summary(store, "c-1", "2026-03")
    assert (summary.input_octets, summary.output_octets) == (big_in, big_out)


async def test_a_stop_closes_the_session(store) -> None:
    await assign(store)
    await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0),
            record(AcctStatus.INTERIM_UPDATE, 60, 100, 100),
            record(AcctStatus.STOP, 90, 150, 180),
        ],
    )
    [opened] = [e.decode() for e in await store.read_stream(session_index_stream("nas-1", "s-1"))]
    assert isinstance(opened, RadiusSessionOpened)
    history = [e.decode() for e in await store.read_stream(f"session-{opened.session_key}")]
    assert all(isinstance(e, SessionCountersRecorded) for e in history)
    assert [e.closed for e in history] == [False, False, True]
    assert (history[-1].input_octets, history[-1].output_octets) == (150, 180)
    assert (history[-1].input_delta, history[-1].output_delta) == (50, 80)


async def test_a_reused_session_id_with_a_new_start_opens_a_new_session(store) -> None:
    await assign(store)
    later = START + timedelta(days=2)
    first = [
        record(AcctStatus.START, 0, 0, 0),
        record(AcctStatus.STOP, 3600, 5_000, 6_000),
    ]
    # The NAS rebooted and its Acct-Session-Id counter started over: same id, new session,
    # counters from zero again. Without a new session the 700 would be swallowed by the 5000.
    second = [
        record(AcctStatus.START, 0, 0, 0, start=later),
        record(AcctStatus.INTERIM_UPDATE, 60, 700, 800, start=later),
    ]
    await rate_all(store, first + second)
    index = [e.decode() for e in await store.read_stream(session_index_stream("nas-1", "s-1"))]
    assert len(index) == 2
    assert index[0].session_key != index[1].session_key
    assert [i.started_at for i in index] == [START, later]
    usage = await all_usage(store)
    assert sum(u.input_octets for u in usage) == 5_700
    assert sum(u.output_octets for u in usage) == 6_800
    assert {u.session_key for u in usage} == {index[0].session_key, index[1].session_key}


async def test_a_late_record_of_the_earlier_session_goes_to_that_session(store) -> None:
    await assign(store)
    later = START + timedelta(days=2)
    await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0),
            record(AcctStatus.INTERIM_UPDATE, 60, 100, 100),
            record(AcctStatus.START, 0, 0, 0, start=later),
            record(AcctStatus.INTERIM_UPDATE, 60, 40, 40, start=later),
            # Delayed Stop of the first session arrives after the second one started.
            record(AcctStatus.STOP, 120, 300, 300),
        ],
    )
    index = [e.decode() for e in await store.read_stream(session_index_stream("nas-1", "s-1"))]
    assert len(index) == 2
    usage = await all_usage(store)
    per_session: dict[str, int] = {}
    for u in usage:
        per_session[u.session_key] = per_session.get(u.session_key, 0) + u.input_octets
    assert per_session == {index[0].session_key: 300, index[1].session_key: 40}


async def test_a_record_for_an_unknown_username_is_not_rated(store) -> None:
    await assign(store, "alice")
    rated = await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0, username="mallory"),
            record(AcctStatus.INTERIM_UPDATE, 60, 1_000, 1_000, username="mallory"),
            record(
                AcctStatus.INTERIM_UPDATE, 60, 1_000, 1_000, acct_session_id="s-2", username=None
            ),
        ],
    )
    assert rated == []
    assert await all_usage(store) == []


@pytest.mark.parametrize(
    ("tz", "period"),
    [("Asia/Dhaka", "2026-12"), ("UTC", "2026-11"), ("America/New_York", "2026-11")],
)
async def test_usage_is_attributed_to_the_period_of_its_event_time_in_the_isps_zone(
    store, tz: str, period: str
) -> None:
    await assign(store)
    start = datetime(2026, 11, 30, 23, 0, 0, tzinfo=UTC)
    # 23:30Z on 30 November is 05:30 on 1 December in Dhaka (UTC+6).
    interim = record(AcctStatus.INTERIM_UPDATE, 1800, 10, 20, start=start)
    [usage] = await rate_all(store, [interim], RatingSettings(timezone=ZoneInfo(tz)))
    assert usage.period == period
    assert len(await store.read_stream(usage_stream("c-1", period))) == 1


async def test_redelivery_after_a_crash_between_session_and_usage_rates_once(store) -> None:
    """Rating once appended a record's counters and its usage in two transactions; a crash in
    between left a ledger whose session holds the record and whose usage stream does not. A
    record is one transaction now, but such ledgers exist: a redelivery still rates the
    record's usage, once."""
    await assign(store)
    first = record(AcctStatus.INTERIM_UPDATE, 60, 1_000, 2_000)
    second = record(AcctStatus.INTERIM_UPDATE, 120, 1_500, 2_600)
    await rate_accounting_record(store, UTC_SETTINGS, message(first))
    [usage_event] = await store.read_stream(usage_stream("c-1", "2026-03"))
    # what the crash left: the same ledger without the usage event
    crashed = SQLiteEventStore(Path(store.path).parent / "crashed.db")
    try:
        for e in await store.read_all(after=0, limit=1000):
            if e.id != usage_event.id:
                plain = NewEvent(**e.model_dump(include=set(NewEvent.model_fields)))
                await crashed.append(e.stream, [plain], ANY)
        assert await all_usage(crashed) == []
        # A later record is rated against the counters the session recorded...
        await rate_accounting_record(crashed, UTC_SETTINGS, message(second))
        # ...and the redelivered one still produces its own usage, once.
        redelivered = await rate_accounting_record(crashed, UTC_SETTINGS, message(first))
        assert redelivered is not None
        assert (redelivered.input_octets, redelivered.output_octets) == (1_000, 2_000)
        await rate_accounting_record(crashed, UTC_SETTINGS, message(first))
        usage = await all_usage(crashed)
        assert sorted(u.record_id for u in usage) == sorted([first.record_id, second.record_id])
        assert sum(u.input_octets for u in usage) == 1_500
        assert sum(u.output_octets for u in usage) == 2_600
    finally:
        await crashed.close()


async def test_concurrent_records_of_one_session_count_every_byte_once(store) -> None:
    await assign(store)
    records = [record(AcctStatus.START, 0, 0, 0)] + [
        record(AcctStatus.INTERIM_UPDATE, 60 * i, 1_000 * i, 2_000 * i) for i in range(1, 9)
    ]
    await asyncio.gather(
        *(rate_accounting_record(store, UTC_SETTINGS, message(r)) for r in records * 2)
    )
    usage = await all_usage(store)
    assert sum(u.input_octets for u in usage) == 8_000
    assert sum(u.output_octets for u in usage) == 16_000
    index = await store.read_stream(session_index_stream("nas-1", "s-1"))
    assert len(index) == 1


async def test_a_late_jittered_record_of_the_earlier_session_is_not_counted_twice(store) -> None:
    await assign(store)
    later = START + timedelta(days=2)
    await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0),
            record(AcctStatus.INTERIM_UPDATE, 600, 1_000, 1_000),
            record(AcctStatus.START, 0, 0, 0, start=later),
        ],
    )
    # The first session's Stop arrives late, and its Acct-Session-Time puts the derived start
    # two seconds off (NAS clock and delay jitter): still the first session, within tolerance.
    jittered = record(AcctStatus.STOP, 900, 1_200, 1_300).model_copy(update={"session_time": 898})
    await rate_all(store, [jittered])
    index = [e.decode() for e in await store.read_stream(session_index_stream("nas-1", "s-1"))]
    assert len(index) == 2
    usage = await all_usage(store)
    assert sum(u.input_octets for u in usage) == 1_200
    assert sum(u.output_octets for u in usage) == 1_300


async def session_history(store, acct_session_id: str) -> list[list[SessionCountersRecorded]]:
    index = [
        e.decode() for e in await store.read_stream(session_index_stream("nas-1", acct_session_id))
    ]
    return [
        [e.decode() for e in await store.read_stream(f"session-{opened.session_key}")]
        for opened in index
    ]


async def test_accounting_on_closes_the_sessions_the_nas_had_open_and_only_those(store) -> None:
    await assign(store)
    reboot = START + timedelta(hours=1)
    await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0, acct_session_id="open-1"),
            record(AcctStatus.INTERIM_UPDATE, 600, 100, 200, acct_session_id="open-1"),
            record(AcctStatus.START, 0, 0, 0, acct_session_id="stopped"),
            record(AcctStatus.STOP, 60, 5, 5, acct_session_id="stopped"),
            nas_event(AcctStatus.ACCOUNTING_ON, reboot),
            # After the reboot the NAS reuses the id: a new session, left open.
            record(
                AcctStatus.START,
                0,
                0,
                0,
                acct_session_id="open-1",
                start=reboot + timedelta(minutes=2),
            ),
        ],
    )
    [before, after] = await session_history(store, "open-1")
    assert [e.closed for e in before] == [False, False, True]
    assert before[-1].status == "accounting-on"
    assert (before[-1].input_delta, before[-1].output_delta) == (0, 0)
    assert (before[-1].input_octets, before[-1].output_octets) == (100, 200)
    assert [e.closed for e in after] == [False]
    [stopped] = await session_history(store, "stopped")
    assert [e.status for e in stopped] == ["start", "stop"]  # already closed: left alone
    markers = [
        e.decode()
        for e in await store.read_stream(nas_sessions_stream("nas-1"))
        if e.type == RadiusNasRebooted.event_type
    ]
    assert [(m.status, m.sessions_closed) for m in markers] == [("accounting-on", 1)]


async def test_a_repeated_accounting_on_closes_nothing_twice_and_late_usage_still_counts(
    store,
) -> None:
    await assign(store)
    reboot = START + timedelta(hours=1)
    on = nas_event(AcctStatus.ACCOUNTING_ON, reboot)
    await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0),
            record(AcctStatus.INTERIM_UPDATE, 600, 100, 100),
            on,
            on,
            # The Stop sent just before the reboot arrives late: its bytes still count.
            record(AcctStatus.STOP, 900, 150, 100),
            nas_event(AcctStatus.ACCOUNTING_OFF, reboot + timedelta(hours=5)),
        ],
    )
    [history] = await session_history(store, "s-1")
    assert [e.status for e in history] == ["start", "interim-update", "accounting-on", "stop"]
    usage = await all_usage(store)
    assert sum(u.input_octets for u in usage) == 150
    markers = [
        e.decode()
        for e in await store.read_stream(nas_sessions_stream("nas-1"))
        if e.type == RadiusNasRebooted.event_type
    ]
    assert [(m.status, m.sessions_closed) for m in markers] == [
        ("accounting-on", 1),
        ("accounting-off", 0),
    ]


def started(
    username: str = "mallory", started_on: date | None = None, subscription_id: str = "sub-9"
) -> SubscriptionStarted:
    return SubscriptionStarted(
        subscription_id=subscription_id,
        customer_id="c-9",
        plan_id="home",
        radius_username=username,
        started_on=started_on or START.date(),
    )


async def test_usage_before_the_subscription_is_kept_and_rated_once_it_starts(store) -> None:
    day_before = START - timedelta(days=1)
    await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0, username="mallory", start=day_before),
            record(AcctStatus.STOP, 600, 7_000, 3_000, username="mallory", start=day_before),
            record(AcctStatus.START, 0, 0, 0, username="mallory", acct_session_id="s-2"),
            record(
                AcctStatus.INTERIM_UPDATE,
                60,
                1_000,
                1_000,
                acct_session_id="s-2",
                username="mallory",
            ),
        ],
    )
    assert await all_usage(store) == []
    [waiting] = await unmatched_usage(store, ZoneInfo("UTC"))
    assert (waiting.username, waiting.total_octets, waiting.records) == ("mallory", 12_000, 2)
    assert waiting.subscription_id is None and waiting.nas_ids == ["nas-1"]

    subscription = started(started_on=START.date())  # the day after the first session
    await claim(store, subscription)
    rated = await rate_unmatched_usage(store, UTC_SETTINGS, subscription)
    assert [(u.customer_id, u.input_octets, u.output_octets) for u in rated] == [
        ("c-9", 1_000, 1_000)
    ]
    await rate_unmatched_usage(store, UTC_SETTINGS, subscription)  # redelivered: nothing new
    assert [u.input_octets for u in await all_usage(store)] == [1_000]
    # The session from before the subscription's start stays unmatched, and says whose it is not.
    [left] = await unmatched_usage(store, ZoneInfo("UTC"))
    assert (left.total_octets, left.subscription_id) == (10_000, "sub-9")
    # From now on the username's usage is rated as it comes.
    more = record(
        AcctStatus.INTERIM_UPDATE, 120, 5_000, 1_000, acct_session_id="s-2", username="mallory"
    )
    [usage] = await rate_all(store, [more])
    assert (usage.input_octets, usage.output_octets) == (4_000, 0)


async def test_a_subscription_recorded_while_the_record_is_rated_does_not_lose_it(
    store,
) -> None:
    """The record found no subscription; the subscription's reactor then ran before the record
    kept its usage as unmatched. The record looks again after keeping it, and rates it."""
    subscription = started()
    append_many = store.append_many
    claimed = False

    async def claimed_meanwhile(*args, **kwargs) -> list[int]:
        nonlocal claimed
        if not claimed and any(s.startswith("unmatched-usage-") for s, _, _ in args[0]):
            claimed = True
            await claim(store, subscription)
            assert await rate_unmatched_usage(store, UTC_SETTINGS, subscription) == []  # too early
        return await append_many(*args, **kwargs)

    store.append_many = claimed_meanwhile
    rated = await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0, username="mallory"),
            record(AcctStatus.INTERIM_UPDATE, 60, 2_000, 500, username="mallory"),
        ],
    )
    assert claimed
    assert [(u.customer_id, u.input_octets) for u in rated] == [("c-9", 2_000)]
    assert await unmatched_usage(store, ZoneInfo("UTC")) == []


async def test_usage_before_the_start_date_is_not_rated_to_the_subscription_live_either(
    store,
) -> None:
    """Online for tests before the contract starts: listed, not billed; from the start on, rated."""
    await claim(store, started(started_on=(START + timedelta(days=1)).date()))
    early = [
        record(AcctStatus.START, 0, 0, 0, username="mallory"),
        record(AcctStatus.INTERIM_UPDATE, 60, 4_000, 1_000, username="mallory"),
    ]
    assert await rate_all(store, early) == []
    [waiting] = await unmatched_usage(store, ZoneInfo("UTC"))
    assert (waiting.total_octets, waiting.subscription_id) == (5_000, "sub-9")
    next_day = record(AcctStatus.INTERIM_UPDATE, 86_400, 6_000, 2_000, username="mallory")
    [usage] = await rate_all(store, [next_day])
    assert (usage.customer_id, usage.input_octets, usage.output_octets) == ("c-9", 2_000, 1_000)
    assert [u.total_octets for u in await unmatched_usage(store, ZoneInfo("UTC"))] == [5_000]


async def test_a_claim_whose_subscription_is_not_written_yet_keeps_the_usage(store) -> None:
    """accounts writes the username claim, then the subscription: usage in between waits for
    the subscription (and its start date), then the reactor rates it."""
    subscription = started()
    assigned = RadiusUsernameAssigned(
        username="mallory", customer_id="c-9", subscription_id="sub-9"
    )
    await store.append(
        radius_user_stream("mallory"),
        [new_event(assigned, id=deterministic_id("claim-only"), occurred_at=START)],
        NO_STREAM,
    )
    in_between = [
        record(AcctStatus.START, 0, 0, 0, username="mallory"),
        record(AcctStatus.INTERIM_UPDATE, 60, 3_000, 0, username="mallory"),
    ]
    assert await rate_all(store, in_between) == []
    await store.append(
        subscription_stream("sub-9"),
        [new_event(subscription, id=deterministic_id("sub-only"), occurred_at=START)],
        NO_STREAM,
    )
    [usage] = await rate_unmatched_usage(store, UTC_SETTINGS, subscription)
    assert (usage.customer_id, usage.input_octets) == ("c-9", 3_000)
    assert await unmatched_usage(store, ZoneInfo("UTC")) == []


async def test_a_claim_pointing_at_another_usernames_subscription_rates_nothing(store) -> None:
    """A start that failed after the claim, its id then used with another username."""
    await claim(store, started(username="other-name"))
    stray = RadiusUsernameAssigned(username="mallory", customer_id="c-9", subscription_id="sub-9")
    await store.append(
        radius_user_stream("mallory"),
        [new_event(stray, id=deterministic_id("stray"), occurred_at=START)],
        NO_STREAM,
    )
    rated = await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0, username="mallory"),
            record(AcctStatus.INTERIM_UPDATE, 60, 1_000, 0, username="mallory"),
        ],
    )
    assert rated == []
    [waiting] = await unmatched_usage(store, ZoneInfo("UTC"))
    assert waiting.username == "mallory"


async def change_username(
    store: SQLiteEventStore, sub: SubscriptionStarted, old: str, new: str, on: date
) -> None:
    """As accounts changes a username: claim the new one, record the change, release the old."""
    claim_new = RadiusUsernameAssigned(
        username=new, customer_id=sub.customer_id, subscription_id=sub.subscription_id
    )
    await store.append(
        radius_user_stream(new),
        [new_event(claim_new, id=deterministic_id("claim", new, sub), occurred_at=START)],
        ANY,
    )
    change = RadiusUsernameChanged(
        subscription_id=sub.subscription_id,
        customer_id=sub.customer_id,
        old_username=old,
        new_username=new,
        effective_on=on,
    )
    await store.append(
        subscription_stream(sub.subscription_id),
        [new_event(change, id=deterministic_id("change", change), occurred_at=START)],
        ANY,
    )
    released = RadiusUsernameReleased(
        username=old, subscription_id=sub.subscription_id, released_on=on
    )
    await store.append(
        radius_user_stream(old),
        [new_event(released, id=deterministic_id("release", released), occurred_at=START)],
        ANY,
    )


async def test_after_a_username_change_the_new_username_rates_to_the_same_subscription(
    store,
) -> None:
    first = started(username="alice", started_on=date(2026, 1, 1), subscription_id="sub-1")
    await claim(store, first)
    change_day = START.date()  # 10 March
    await change_username(store, first, "alice", "alice-new", change_day)

    before = START - timedelta(days=2)
    old_name_before = [
        record(AcctStatus.START, 0, 0, 0, start=before, acct_session_id="a", username="alice"),
        record(AcctStatus.STOP, 60, 100, 0, start=before, acct_session_id="a", username="alice"),
    ]
    new_name_before = [
        record(AcctStatus.START, 0, 0, 0, start=before, acct_session_id="b", username="alice-new"),
        record(
            AcctStatus.STOP, 60, 200, 0, start=before, acct_session_id="b", username="alice-new"
        ),
    ]
    new_name_after = [
        record(AcctStatus.START, 0, 0, 0, acct_session_id="c", username="alice-new"),
        record(AcctStatus.STOP, 60, 300, 0, acct_session_id="c", username="alice-new"),
    ]
    rated = await rate_all(store, old_name_before + new_name_before + new_name_after)
    # the old username's usage before the change and the new one's from it: sub-1; the new
    # username's usage from before the change is nobody's
    assert [(u.subscription_id, u.input_octets) for u in rated] == [("sub-1", 100), ("sub-1", 300)]

    # the released username, reused by another subscription from the 20th, is that one's
    second = started(username="alice", started_on=date(2026, 3, 20), subscription_id="sub-2")
    await store.append(
        radius_user_stream("alice"),
        [
            new_event(
                RadiusUsernameAssigned(
                    username="alice", customer_id="c-9", subscription_id="sub-2"
                ),
                id=deterministic_id("reclaim"),
                occurred_at=START,
            )
        ],
        ANY,
    )
    await store.append(
        subscription_stream("sub-2"),
        [new_event(second, id=deterministic_id("sub-2"), occurred_at=START)],
        NO_STREAM,
    )
    later = START + timedelta(days=15)
    late_old = START - timedelta(days=1)
    rated = await rate_all(
        store,
        [
            record(AcctStatus.START, 0, 0, 0, start=later, acct_session_id="d", username="alice"),
            record(AcctStatus.STOP, 60, 400, 0, start=later, acct_session_id="d", username="alice"),
            record(
                AcctStatus.START, 0, 0, 0, start=late_old, acct_session_id="e", username="alice"
            ),
            record(
                AcctStatus.STOP, 60, 500, 0, start=late_old, acct_session_id="e", username="alice"
            ),
        ],
    )
    # a late record from before the change still goes to the subscription that had the name
    assert [(u.subscription_id, u.input_octets) for u in rated] == [("sub-2", 400), ("sub-1", 500)]


async def test_usage_of_a_new_username_before_the_change_was_recorded_is_rated_once_it_is(
    store,
) -> None:
    """The router was reconfigured before the clerk recorded the change: the new username's
    usage from the change's day waits unmatched, then the reactor rates it; earlier stays."""
    first = started(username="alice", started_on=date(2026, 1, 1), subscription_id="sub-1")
    await claim(store, first)
    day_before = START - timedelta(days=1)
    early = [
        record(AcctStatus.START, 0, 0, 0, start=day_before, acct_session_id="x", username="al"),
        record(AcctStatus.STOP, 60, 7, 0, start=day_before, acct_session_id="x", username="al"),
    ]
    same_day = [
        record(AcctStatus.START, 0, 0, 0, acct_session_id="y", username="al"),
        record(AcctStatus.STOP, 60, 9, 0, acct_session_id="y", username="al"),
    ]
    assert await rate_all(store, early + same_day) == []
    await change_username(store, first, "alice", "al", START.date())
    change = RadiusUsernameChanged(
        subscription_id="sub-1",
        customer_id="c-9",
        old_username="alice",
        new_username="al",
        effective_on=START.date(),
    )
    [usage] = await rate_unmatched_usage_of_new_username(store, UTC_SETTINGS, change)
    assert (usage.subscription_id, usage.input_octets) == ("sub-1", 9)
    again = await rate_unmatched_usage_of_new_username(store, UTC_SETTINGS, change)
    assert [u.record_id for u in again] == [usage.record_id]
    assert [u.input_octets for u in await all_usage(store)] == [9]
