"""Rating's usage and session read models, filled from what rating really writes: daily usage
(local days, bands, counted bytes), a customer's period by bucket, top users, the sessions open
now and the session log; kept live in small batches equal to a rebuild from zero; on SQLite and
PostgreSQL. A property test holds the daily and period sums equal to the UsageRated events."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispbill_core.contracts.accounts import PlanDefined, SubscriptionStarted, TimeBand, plan_stream
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM, EventStore
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from ispbill_core.projections import ReadModelDatabase
from ispbill_core.projections.projector import Projector
from ispbill_core.projections.sqlite import SQLiteReadModels
from rating.application.rate_accounting_record import RatingSettings
from rating.application.rate_batch import RatingCache, rate_accounting_batch
from rating.application.read_models import rating_projections
from rating.application.session_read_models import (
    LiveSessionsProjection,
    LogCursor,
    SessionLogProjection,
    SessionQueries,
)
from rating.application.usage_read_models import (
    DailyUsageProjection,
    TopUsersProjection,
    UsageQueries,
    usage_day,
)
from rating.domain.events import SessionCountersRecorded
from tests.fixtures.radius import claim, message

pytestmark = pytest.mark.integration

#: UTC+6, no daylight saving: 18:00 UTC is local midnight.
TZ = ZoneInfo("Asia/Dhaka")
SETTINGS = RatingSettings(timezone=TZ)
#: 23:00 on 10 March in Dhaka
START = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)

NIGHT_OWL = PlanDefined(
    plan_id="night-owl",
    name="Night owl",
    monthly_fee=Money.of("30.00", "USD"),
    included_bytes=10**10,
    overage_price=Money.of("1.00", "USD"),
    time_bands=(
        TimeBand(name="night", start="00:00", end="06:00", multiplier="free"),
        TimeBand(name="evening", start="18:00", end="23:00", multiplier=Decimal("0.5")),
    ),
)
SUBSCRIPTIONS = [
    # (subscription, customer, plan, username)
    ("sub-1", "c-1", "night-owl", "alice"),
    ("sub-2", "c-1", "home", "bob"),
    ("sub-3", "c-2", "night-owl", "carol"),
]


def accounting(
    status: AcctStatus,
    seconds: int,
    input_octets: int = 0,
    output_octets: int = 0,
    *,
    acct_session_id: str,
    username: str | None,
    nas_id: str = "nas-1",
    start: datetime = START,
    framed_ip: str | None = None,
    cause: str | None = None,
) -> AccountingRecordReceived:
    at = start + timedelta(seconds=seconds)
    return AccountingRecordReceived(
        record_id=deterministic_id(
            "read-model-test", nas_id, acct_session_id, start, status, seconds, input_octets
        ),
        nas_id=nas_id,
        nas_ip="192.0.2.1",
        status=status,
        acct_session_id=acct_session_id,
        username=username,
        event_time=at,
        received_at=at,
        session_time=seconds,
        input_octets=input_octets,
        output_octets=output_octets,
        framed_ip_address=framed_ip,
        terminate_cause=cause,
    )


def reboot(nas_id: str, at: datetime) -> AccountingRecordReceived:
    return AccountingRecordReceived(
        record_id=deterministic_id("read-model-test-reboot", nas_id, at),
        nas_id=nas_id,
        nas_ip="192.0.2.1",
        status=AcctStatus.ACCOUNTING_ON,
        acct_session_id="",
        event_time=at,
        received_at=at,
    )


START_, INTERIM, STOP = AcctStatus.START, AcctStatus.INTERIM_UPDATE, AcctStatus.STOP

TRAFFIC = [
    # alice: 23:00 to 01:00 local, across midnight into the free night band; stopped
    accounting(START_, 0, acct_session_id="a-1", username="alice", framed_ip="10.0.0.1"),
    accounting(INTERIM, 3600, 1_000_000, 4_000_000, acct_session_id="a-1", username="alice"),
    # bob: from 23:10 local, on the second NAS, still open
    accounting(START_, 0, acct_session_id="b-1", username="bob", nas_id="nas-2", start=START
               + timedelta(minutes=10), framed_ip="10.0.0.2"),
    accounting(STOP, 7200, 3_000_000, 9_000_000, acct_session_id="a-1", username="alice",
               framed_ip="10.0.0.1", cause="User-Request"),
    accounting(INTERIM, 1800, 500_000, 700_000, acct_session_id="b-1", username="bob",
               nas_id="nas-2", start=START + timedelta(minutes=10), framed_ip="10.0.0.2"),
    # carol: from 20:00 local (evening band), closed by her NAS's restart
    accounting(START_, 0, acct_session_id="c-1", username="carol", start=START
               - timedelta(hours=3), framed_ip="10.0.0.3"),
    accounting(INTERIM, 1800, 2_000_000, 2_000_000, acct_session_id="c-1", username="carol",
               start=START - timedelta(hours=3), framed_ip="10.0.0.3"),
    # dave: no subscription has the username; online all the same
    accounting(START_, 0, acct_session_id="d-1", username="dave", nas_id="nas-2",
               start=START + timedelta(minutes=20), framed_ip="10.0.0.4"),
    reboot("nas-1", START + timedelta(hours=2, minutes=30)),
]  # fmt: skip


async def seed(store: EventStore) -> None:
    await store.append(
        plan_stream(NIGHT_OWL.plan_id),
        [new_event(NIGHT_OWL, id=deterministic_id("plan", NIGHT_OWL.plan_id), occurred_at=START)],
        NO_STREAM,
    )
    for subscription_id, customer_id, plan_id, username in SUBSCRIPTIONS:
        await claim(
            store,
            SubscriptionStarted(
                subscription_id=subscription_id,
                customer_id=customer_id,
                plan_id=plan_id,
                radius_username=username,
                started_on=date(2026, 1, 1),
            ),
        )


async def rate(store: EventStore, records: Sequence[AccountingRecordReceived], size: int) -> None:
    cache = RatingCache()
    messages = [message(r) for r in records]
    for at in range(0, len(messages), size):
        await rate_accounting_batch(store, SETTINGS, messages[at : at + size], cache)


async def table_contents(db: ReadModelDatabase, projector: Projector) -> dict[str, Any]:
    contents = {}
    for runner in projector.runners.values():
        for table in runner.projection.tables:
            rows = await db.fetch(f"SELECT * FROM {table}")
            contents[table] = sorted(tuple(str(v) for v in row) for row in rows)
    return contents


async def follow(projector: Projector, batch_size: int) -> None:
    """Run the projections live, in small batches, until they have seen the whole ledger."""
    for runner in projector.runners.values():
        runner.batch_size = batch_size
    task = asyncio.create_task(projector.run())
    try:
        assert await projector.catch_up(timeout=20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """("sqlite", ""), or a PostgreSQL DSN and a fresh schema in the run's database (dropped
    with the database at the end of the run)."""
    if request.param == "sqlite":
        return "sqlite", ""
    return request.getfixturevalue("postgres_dsn"), f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def ledger(
    backend: tuple[str, str], tmp_path: Path
) -> AsyncIterator[tuple[EventStore, ReadModelDatabase]]:
    dsn, schema = backend
    if dsn == "sqlite":
        store = SQLiteEventStore(tmp_path / "ledger.db")
        try:
            yield store, SQLiteReadModels(store)
        finally:
            await store.close()
        return
    from ispbill_core.eventstore.postgresql import PostgresEventStore
    from ispbill_core.projections.postgresql import PostgresReadModels

    pg_store = await PostgresEventStore.connect(dsn, schema=schema)
    db = await PostgresReadModels.connect(dsn, schema=schema)
    try:
        yield pg_store, db
    finally:
        await db.close()
        await pg_store.close()


@pytest.fixture
async def rated(ledger: tuple[EventStore, ReadModelDatabase]) -> tuple[EventStore, Any]:
    """The traffic rated (three records a batch) and the projections followed live."""
    store, db = ledger
    await seed(store)
    await rate(store, TRAFFIC, 3)
    projector = Projector(store, db, rating_projections(TZ))
    await follow(projector, batch_size=4)
    return store, db


# --- usage -------------------------------------------------------------------------------------


async def usage_by_day(store: EventStore) -> dict[tuple[str, date, str], tuple[int, int]]:
    sums: dict[tuple[str, date, str], tuple[int, int]] = defaultdict(lambda: (0, 0))
    for usage in await all_events_of(store, UsageRated):
        key = (usage.subscription_id, usage_day(usage, TZ), usage.band)
        # the day is in the piece's billing period, as rating placed it
        assert usage_day(usage, TZ).strftime("%Y-%m") == usage.period
        i, o = sums[key]
        sums[key] = (i + usage.input_octets, o + usage.output_octets)
    return dict(sums)


async def test_daily_usage_is_per_local_day_and_band_with_counted_bytes(rated: Any) -> None:
    store, db = rated
    reads = UsageQueries(db)
    days = await reads.daily("sub-1", date(2026, 3, 1), date(2026, 3, 31))
    # 23:00 to 01:00 in Dhaka: half on the 10th (outside every band), half on the 11th (night)
    assert [(d.day, d.period, [b.band for b in d.bands]) for d in days] == [
        (date(2026, 3, 10), "2026-03", [""]),
        (date(2026, 3, 11), "2026-03", ["night"]),
    ]
    tenth, eleventh = days
    assert tenth.total_octets + eleventh.total_octets == 12_000_000
    assert tenth.counted_octets == tenth.total_octets  # standard time counts once
    assert eleventh.counted_octets == 0  # the night band is free
    expected = await usage_by_day(store)
    for d in days:
        for b in d.bands:
            assert (b.input_octets, b.output_octets) == expected[("sub-1", d.day, b.band)]
            assert b.total_octets == b.input_octets + b.output_octets
    # carol's evening counts half
    [carols] = await reads.daily("sub-3", date(2026, 3, 10), date(2026, 3, 10))
    assert [b.band for b in carols.bands] == ["evening"]
    assert carols.counted_octets == carols.total_octets // 2 == 2_000_000
    # a range without usage, and one of another subscription
    assert await reads.daily("sub-1", date(2026, 3, 12), date(2026, 3, 31)) == []
    assert await reads.daily("nobody", date(2026, 3, 1), date(2026, 3, 31)) == []
    with pytest.raises(ValueError, match="366"):
        await reads.daily("sub-1", date(2025, 1, 1), date(2026, 3, 31))
    with pytest.raises(ValueError, match="before"):
        await reads.daily("sub-1", date(2026, 3, 2), date(2026, 3, 1))


async def test_a_customers_period_is_split_by_subscription_and_bucket(rated: Any) -> None:
    _, db = rated
    period = await UsageQueries(db).period("c-1", "2026-03")
    assert [s.subscription_id for s in period.subscriptions] == ["sub-1", "sub-2"]
    alice, bob = period.subscriptions
    assert [(b.band, b.plan_id, b.plan_version, b.suspended) for b in alice.buckets] == [
        ("", "night-owl", 1, False),
        ("night", "night-owl", 1, False),
    ]
    assert alice.total_octets == 12_000_000
    assert alice.counted_octets == alice.buckets[0].total_octets
    # bob's plan has no recorded version: one bucket, counted as it is
    assert [
        (b.band, b.plan_id, b.plan_version, b.total_octets, b.counted_octets) for b in bob.buckets
    ] == [("", "home", None, 1_200_000, 1_200_000)]
    assert period.total_octets == alice.total_octets + bob.total_octets
    assert period.counted_octets == alice.counted_octets + bob.counted_octets
    empty = await UsageQueries(db).period("c-1", "2026-04")
    assert (empty.subscriptions, empty.total_octets) == ([], 0)


async def test_top_users_of_a_period_most_first(rated: Any) -> None:
    _, db = rated
    top = await UsageQueries(db).top("2026-03", 10)
    assert [(t.rank, t.subscription_id, t.customer_id, t.total_octets) for t in top] == [
        (1, "sub-1", "c-1", 12_000_000),
        (2, "sub-3", "c-2", 4_000_000),
        (3, "sub-2", "c-1", 1_200_000),
    ]
    assert [t.subscription_id for t in await UsageQueries(db).top("2026-03", 1)] == ["sub-1"]
    assert await UsageQueries(db).top("2026-04", 10) == []
    with pytest.raises(ValueError):
        await UsageQueries(db).top("2026-03", 101)


# --- sessions ----------------------------------------------------------------------------------


async def test_live_sessions_are_the_open_ones_filtered_and_paged(rated: Any) -> None:
    _, db = rated
    reads = SessionQueries(db, TZ)
    live = await reads.live()
    # alice stopped, carol's NAS restarted: bob and dave are online, the latest opened first
    assert [(s.username, s.nas_id, s.framed_ip_address) for s in live] == [
        ("dave", "nas-2", "10.0.0.4"),
        ("bob", "nas-2", "10.0.0.2"),
    ]
    dave, bob = live
    assert (dave.customer_id, dave.subscription_id) == (None, None)
    assert (bob.customer_id, bob.subscription_id) == ("c-1", "sub-2")
    assert bob.started_at == START + timedelta(minutes=10)
    assert bob.last_update == START + timedelta(minutes=40)
    assert (bob.input_octets, bob.output_octets, bob.total_octets) == (500_000, 700_000, 1_200_000)
    assert [s.username for s in await reads.live(username="bob")] == ["bob"]
    assert [s.username for s in await reads.live(nas_id="nas-2", username="dave")] == ["dave"]
    assert await reads.live(nas_id="nas-1") == []
    first = await reads.live(limit=1)
    second = await reads.live(limit=1, before=first[-1].cursor)
    third = await reads.live(limit=1, before=second[-1].cursor)
    assert [s.username for s in first + second + third] == ["dave", "bob"]


async def test_the_session_log_has_start_stop_bytes_nas_address_and_cause(rated: Any) -> None:
    _, db = rated
    reads = SessionQueries(db, TZ)
    log = await reads.log("c-1")
    assert [s.username for s in log] == ["bob", "alice"]  # the newest start first
    bob, alice = log
    assert alice.session_key.startswith("nas-1-a-1-")
    assert (alice.started_at, alice.stopped_at) == (START, START + timedelta(hours=2))
    assert alice.duration_seconds == 7200 and not alice.open
    assert (alice.input_octets, alice.output_octets, alice.total_octets) == (
        3_000_000,
        9_000_000,
        12_000_000,
    )
    assert (alice.nas_id, alice.framed_ip_address, alice.subscription_id) == (
        "nas-1",
        "10.0.0.1",
        "sub-1",
    )
    assert (alice.closed_by, alice.terminate_cause, alice.records) == ("stop", "User-Request", 3)
    assert bob.open and bob.stopped_at is None and bob.closed_by is None
    assert bob.duration_seconds == 1800  # so far: to its last record
    [carol] = await reads.log("c-2")
    assert (carol.closed_by, carol.terminate_cause) == ("accounting-on", None)
    assert carol.stopped_at == START + timedelta(hours=2, minutes=30)
    assert carol.framed_ip_address == "10.0.0.3"
    # local days: both started late on the 10th in Dhaka (the 10th in UTC too, 17:00)
    assert len(await reads.log("c-1", first=date(2026, 3, 10), last=date(2026, 3, 10))) == 2
    assert await reads.log("c-1", first=date(2026, 3, 11)) == []
    assert await reads.log("c-1", last=date(2026, 3, 9)) == []
    assert [s.username for s in await reads.log("c-1", subscription_id="sub-1")] == ["alice"]
    # paged: each cursor goes on where the page ended
    page = await reads.log("c-1", limit=1)
    rest = await reads.log("c-1", limit=1, before=LogCursor.parse(page[0].cursor))
    assert [s.username for s in page + rest] == ["bob", "alice"]
    assert await reads.log("c-1", limit=1, before=LogCursor.parse(rest[0].cursor)) == []
    assert await reads.log("nobody") == []


async def test_every_read_model_kept_live_equals_its_rebuild(rated: Any) -> None:
    store, db = rated
    projector = Projector(store, db, rating_projections(TZ))
    live = await table_contents(db, projector)
    assert live["rm_session_log"] and live["rm_usage_daily"] and live["rm_usage_top"]
    await projector.rebuild_now()
    assert await table_contents(db, projector) == live
    for name in projector.runners:
        await projector.rebuild_now(name)
    assert await table_contents(db, projector) == live
    assert await db.parked() == []


async def test_a_record_delivered_again_changes_no_read_model(rated: Any) -> None:
    store, db = rated
    projector = Projector(store, db, rating_projections(TZ))
    before = await table_contents(db, projector)
    await rate(store, TRAFFIC, 5)  # the whole traffic again: rating records nothing new
    await follow(projector, batch_size=4)
    assert await table_contents(db, projector) == before


def test_each_projection_folds_a_batch_as_it_folds_its_events_one_at_a_time() -> None:
    """A batch's merged statements leave the same rows as the events one by one: checked on
    the traffic's own events (the property test below checks random traffic)."""

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteEventStore(Path(tmp) / "ledger.db")
            try:
                await seed(store)
                await rate(store, TRAFFIC, 2)
                db = SQLiteReadModels(store)
                projector = Projector(store, db, rating_projections(TZ))
                await follow(projector, batch_size=1)
                one_by_one = await table_contents(db, projector)
                await projector.rebuild_now()
                assert await table_contents(db, projector) == one_by_one
            finally:
                await store.close()

    asyncio.run(scenario())


# --- property: the read models add up to what rating recorded ----------------------------------

USERS = ("alice", "bob", "carol", "dave", None)


@st.composite
def traffic(draw: st.DrawFn) -> list[AccountingRecordReceived]:
    """Sessions on two NASes over a day and a half in Dhaka, interleaved, with duplicates,
    retransmissions and maybe a restart of a NAS."""
    records: list[AccountingRecordReceived] = []
    for s in range(draw(st.integers(1, 4))):
        user = draw(st.sampled_from(USERS))
        nas = draw(st.sampled_from(["nas-1", "nas-2"]))
        start = START + timedelta(minutes=draw(st.integers(-600, 1200)))
        seconds = cum_in = cum_out = 0
        session = [
            accounting(START_, 0, acct_session_id=f"s-{s}", username=user, nas_id=nas, start=start)
        ]
        for i in range(draw(st.integers(0, 4))):
            seconds += draw(st.integers(1, 6 * 3600))
            cum_in += draw(st.integers(0, 10**9))
            cum_out += draw(st.integers(0, 10**9))
            status = STOP if i == 3 else INTERIM
            session.append(
                accounting(
                    status,
                    seconds,
                    cum_in,
                    cum_out,
                    acct_session_id=f"s-{s}",
                    username=user,
                    nas_id=nas,
                    start=start,
                    framed_ip=draw(st.sampled_from([None, f"10.1.0.{s}"])),
                    cause="Idle-Timeout" if status == STOP else None,
                )
            )
        records += session
    if draw(st.booleans()):
        records.append(reboot("nas-1", START + timedelta(minutes=draw(st.integers(0, 1800)))))
    extra = draw(st.lists(st.sampled_from(records), max_size=3))
    return draw(st.permutations(records + extra))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(traffic(), st.integers(1, 7), st.integers(1, 9))
def test_the_read_models_add_up_to_what_rating_recorded(
    delivered: list[AccountingRecordReceived], rating_batch: int, projection_batch: int
) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteEventStore(Path(tmp) / "ledger.db", synchronous="OFF")
            try:
                await seed(store)
                await rate(store, delivered, rating_batch)
                db = SQLiteReadModels(store)
                projector = Projector(store, db, rating_projections(TZ))
                await follow(projector, projection_batch)
                await check_sums(store, db)
                live = await table_contents(db, projector)
                await projector.rebuild_now()
                assert await table_contents(db, projector) == live
            finally:
                await store.close()

    asyncio.run(scenario())


async def check_sums(store: EventStore, db: ReadModelDatabase) -> None:
    rated = await all_events_of(store, UsageRated)
    usage = UsageQueries(db)
    # per subscription and local day: the daily rows are the UsageRated events' sums
    by_day = await usage_by_day(store)
    for subscription_id, _, _, _ in SUBSCRIPTIONS:
        days = await usage.daily(subscription_id, date(2026, 3, 1), date(2026, 3, 31))
        found = {
            (subscription_id, d.day, b.band): (b.input_octets, b.output_octets)
            for d in days
            for b in d.bands
        }
        assert found == {k: v for k, v in by_day.items() if k[0] == subscription_id}
    # per customer and period, and the top users: the same sums
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for u in rated:
        totals[(u.subscription_id, u.period)] += u.total_octets
    for customer_id in ("c-1", "c-2"):
        period = await usage.period(customer_id, "2026-03")
        assert {s.subscription_id: s.total_octets for s in period.subscriptions} == {
            s: t for (s, p), t in totals.items() if p == "2026-03" and s in _subs_of(customer_id)
        }
    top = await usage.top("2026-03", 100)
    assert {t.subscription_id: t.total_octets for t in top} == {
        s: t for (s, p), t in totals.items() if p == "2026-03"
    }
    assert [t.total_octets for t in top] == sorted((t.total_octets for t in top), reverse=True)
    # sessions: one log row per session, the open ones live, the counters the last recorded
    sessions: dict[str, list[SessionCountersRecorded]] = defaultdict(list)
    for counters in await all_events_of(store, SessionCountersRecorded):
        sessions[counters.session_key].append(counters)
    logged = await db.fetch(
        "SELECT session_key, input_octets, output_octets, closed FROM rm_session_log"
    )
    assert {r[0]: (int(r[1]), int(r[2]), bool(r[3])) for r in logged} == {
        key: (
            history[-1].input_octets,
            history[-1].output_octets,
            any(c.closed for c in history),
        )
        for key, history in sessions.items()
    }
    live = await SessionQueries(db, TZ).live(limit=500)
    assert {s.session_key for s in live} == {
        key for key, history in sessions.items() if not any(c.closed for c in history)
    }


def _subs_of(customer_id: str) -> set[str]:
    return {s for s, c, _, _ in SUBSCRIPTIONS if c == customer_id}


def test_the_projections_are_named_and_own_their_tables() -> None:
    projections = rating_projections(TZ)
    names = [p.name for p in projections]
    assert names == [
        "rating.unmatched-usage",
        "rating.usage-daily",
        "rating.usage-top",
        "rating.live-sessions",
        "rating.session-log",
    ]
    tables = [t for p in projections for t in p.tables]
    assert len(tables) == len(set(tables))
    assert {type(p) for p in projections} >= {
        DailyUsageProjection,
        TopUsersProjection,
        LiveSessionsProjection,
        SessionLogProjection,
    }
