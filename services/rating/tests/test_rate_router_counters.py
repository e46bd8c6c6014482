"""Router counters rated on the SQLite ledger: which subscription a sample measures, which
source bills a subscription (never both), idempotency, and the discrepancy report."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from ispbill_core.contracts.accounts import (
    SubscriptionStarted,
    SubscriptionTerminated,
    subscription_stream,
)
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import (
    AcctStatus,
    CounterSource,
    RouterCountersSampled,
)
from ispbill_core.events import NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, EventStore
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.projections import ReadModelDatabase
from ispbill_core.projections.projector import Projector
from ispbill_core.projections.sqlite import SQLiteReadModels
from rating.application.rate_accounting_record import (
    rate_accounting_record,
    rate_unmatched_usage,
    unmatched_usage_stream,
)
from rating.application.rate_router_counters import (
    CounterOwner,
    counter_owner,
    rate_router_counters,
)
from rating.application.usage_discrepancies import (
    UsageBySourceProjection,
    discrepancy,
    is_flagged,
    usage_discrepancies,
)
from rating.application.usage_summary import usage_summary
from rating.domain.events import UsageMeasured, UsageUnmatched
from tests.fixtures.radius import START, UTC_SETTINGS, claim, message, record

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def sampled(
    at: datetime,
    delta_in: int,
    delta_out: int,
    *,
    previous: datetime | None = None,
    username: str | None = None,
    hint: str | None = None,
    interface: str = "ether5",
) -> RouterCountersSampled:
    return RouterCountersSampled(
        router_id="core-1",
        interface_key=interface,
        subscriber_hint=hint,
        octets_in=delta_in,
        octets_out=delta_out,
        delta_in=delta_in,
        delta_out=delta_out,
        sampled_at=at,
        previous_sampled_at=previous,
        username=username,
        source=CounterSource.SNMP_INTERFACE
        if username is None
        else CounterSource.ROUTEROS_INTERFACE,
    )


def envelope(sample: RouterCountersSampled) -> NewEvent:
    """As the poller publishes it: the id derives from the counter and the time."""
    return new_event(
        sample,
        id=deterministic_id(
            "test-sample", sample.router_id, sample.interface_key, sample.sampled_at
        ),
        occurred_at=sample.sampled_at,
    )


def subscription(
    usage_source: str = "router", *, username: str = "carol", started_on: date = date(2026, 1, 1)
) -> SubscriptionStarted:
    return SubscriptionStarted(
        subscription_id="sub-1",
        customer_id="c-1",
        plan_id="home",
        radius_username=username,
        started_on=started_on,
        usage_source=usage_source,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


async def rate(store, *samples: RouterCountersSampled) -> list[UsageRated]:
    return await rate_router_counters(store, UTC_SETTINGS, [envelope(s) for s in samples])


# --- which subscription a sample measures ---------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("username", "hint", "owner"),
    [
        ("alice", "subscription:S9", CounterOwner(username="alice")),  # the username wins
        (None, "subscription:S9", CounterOwner(subscription_id="S9")),
        (None, "username:subscription:odd", CounterOwner(username="subscription:odd")),
        (None, "carol", CounterOwner(username="carol")),
        (None, "customer:C1", CounterOwner(username="customer:C1")),  # no customer ids
        (None, "subscription:", None),
        (None, "  ", None),
        (None, None, None),
    ],
)
def test_a_sample_names_its_subscriber_by_username_then_by_hint(username, hint, owner) -> None:
    assert counter_owner(sampled(T0, 1, 1, username=username, hint=hint)) == owner


@pytest.mark.integration
async def test_a_router_measured_subscription_is_billed_by_its_counters(store) -> None:
    await claim(store, subscription("router"))
    rated = await rate(
        store, sampled(T0, 3_000, 7_000, previous=T0 - timedelta(minutes=5), hint="carol")
    )
    [usage] = rated
    assert (usage.source, usage.subscription_id, usage.period) == ("router", "sub-1", "2026-03")
    assert (usage.input_octets, usage.output_octets) == (3_000, 7_000)
    assert usage.session_key == "router:core-1/ether5"
    assert usage.started_at == T0 - timedelta(minutes=5) and usage.occurred_at == T0
    assert (await usage_summary(store, "c-1", "2026-03")).total_octets == 10_000


@pytest.mark.integration
async def test_a_delta_over_midnight_at_a_periods_end_is_split_in_proportion(store) -> None:
    await claim(store, subscription("router"))
    midnight = datetime(2026, 4, 1, tzinfo=UTC)
    rated = await rate(
        store,
        sampled(
            midnight + timedelta(minutes=3),
            4_000,
            8_000,
            previous=midnight - timedelta(minutes=1),
            hint="carol",
        ),
    )
    assert [(u.period, u.input_octets, u.output_octets) for u in rated] == [
        ("2026-03", 1_000, 2_000),
        ("2026-04", 3_000, 6_000),
    ]


@pytest.mark.integration
async def test_a_sample_delivered_twice_is_rated_once(store) -> None:
    await claim(store, subscription("router"))
    one = sampled(T0, 1_000, 2_000, previous=T0 - timedelta(minutes=1), hint="carol")
    await rate(store, one, one)  # twice in a batch
    await rate(store, one)  # and delivered again
    usage = await all_events_of(store, UsageRated)
    assert [(u.input_octets, u.output_octets) for u in usage] == [(1_000, 2_000)]


@pytest.mark.integration
async def test_samples_that_moved_nothing_or_name_no_one_write_nothing(store) -> None:
    await claim(store, subscription("router"))
    head = await store.head_position()
    await rate(store, sampled(T0, 0, 0, hint="carol"), sampled(T0, 5, 5, interface="ether9"))
    assert await store.head_position() == head


@pytest.mark.integration
async def test_a_subscription_hint_rates_from_its_start_to_its_last_day(store) -> None:
    await claim(store, subscription("router", started_on=date(2026, 3, 10)))
    await store.append(
        subscription_stream("sub-1"),
        [
            new_event(
                SubscriptionTerminated(
                    subscription_id="sub-1", effective_on=date(2026, 3, 20), reason="moved"
                ),
                id=deterministic_id("terminated"),
                occurred_at=START,
            )
        ],
        ANY,
    )
    hint = "subscription:sub-1"
    rated = await rate(
        store,
        sampled(T0 - timedelta(days=1), 100, 100, hint=hint),  # before its start
        sampled(T0, 200, 200, hint=hint),
        sampled(T0 + timedelta(days=10), 300, 300, hint=hint),  # its last day
        sampled(T0 + timedelta(days=11), 400, 400, hint=hint),  # after it
    )
    assert [u.input_octets for u in rated] == [200, 300]
    kept = [e.decode() for e in await store.read_stream(unmatched_usage_stream(hint))]
    assert [(u.input_octets, u.source, u.nas_id) for u in kept] == [
        (100, "router", "core-1"),
        (400, "router", "core-1"),
    ]


@pytest.mark.integration
async def test_usage_of_a_username_no_one_has_yet_is_rated_when_its_subscription_starts(
    store,
) -> None:
    await rate(store, sampled(T0, 1_000, 4_000, previous=T0 - timedelta(minutes=1), hint="carol"))
    [kept] = [e.decode() for e in await store.read_stream(unmatched_usage_stream("carol"))]
    assert isinstance(kept, UsageUnmatched) and kept.source == "router"
    started = subscription("router")
    await claim(store, started)
    [usage] = await rate_unmatched_usage(store, UTC_SETTINGS, started)
    assert (usage.source, usage.total_octets) == ("router", 5_000)
    # the live path, delivered again now, finds the same usage: still once
    await rate(store, sampled(T0, 1_000, 4_000, previous=T0 - timedelta(minutes=1), hint="carol"))
    assert len(await all_events_of(store, UsageRated)) == 1


# --- one source bills, the other is compared --------------------------------------------------


@pytest.mark.integration
async def test_a_radius_subscriber_is_billed_by_radius_only_and_the_router_is_compared(
    store,
) -> None:
    await claim(store, subscription("radius", username="alice"))
    await rate_accounting_record(store, UTC_SETTINGS, message(record(AcctStatus.START, 0, 0, 0)))
    await rate_accounting_record(
        store, UTC_SETTINGS, message(record(AcctStatus.INTERIM_UPDATE, 600, 10_000, 20_000))
    )
    # RouterOS sees alice's PPPoE interface too
    rated = await rate(
        store, sampled(START + timedelta(seconds=600), 10_600, 21_000, username="alice")
    )
    assert rated == []
    billed = await all_events_of(store, UsageRated)
    assert [(u.source, u.total_octets) for u in billed] == [("radius", 30_000)]
    [measured] = await all_events_of(store, UsageMeasured)
    assert (measured.source, measured.billed_by, measured.input_octets) == (
        "router",
        "radius",
        10_600,
    )
    assert (await usage_summary(store, "c-1", "2026-03")).total_octets == 30_000


@pytest.mark.integration
async def test_radius_accounting_of_a_router_billed_subscriber_is_compared_not_billed(
    store,
) -> None:
    await claim(store, subscription("router", username="alice"))
    await rate_accounting_record(store, UTC_SETTINGS, message(record(AcctStatus.START, 0, 0, 0)))
    usage = await rate_accounting_record(
        store, UTC_SETTINGS, message(record(AcctStatus.STOP, 600, 1_000, 2_000))
    )
    assert usage is None
    await rate(store, sampled(START + timedelta(seconds=600), 1_100, 2_100, username="alice"))
    billed = await all_events_of(store, UsageRated)
    assert [(u.source, u.total_octets) for u in billed] == [("router", 3_200)]
    [measured] = await all_events_of(store, UsageMeasured)
    assert (measured.source, measured.billed_by) == ("radius", "router")
    assert (measured.input_octets, measured.output_octets) == (1_000, 2_000)


# --- the discrepancy report --------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("radius", "router", "threshold", "flagged"),
    [
        (100_000, 105_000, 5.0, False),  # exactly 5 %: not above it
        (100_000, 105_001, 5.0, True),
        (100_000, 94_999, 5.0, True),  # less, by more than 5 %
        (100_000, 102_000, 1.0, True),
        (0, 1, 5.0, True),  # the router saw traffic RADIUS did not
        (0, 0, 5.0, False),
    ],
)
def test_a_difference_is_flagged_above_the_threshold_either_way(
    radius, router, threshold, flagged
) -> None:
    assert is_flagged(radius, router, threshold) is flagged


@pytest.mark.unit
def test_a_discrepancy_shows_both_figures_the_difference_and_its_percentage() -> None:
    d = discrepancy("s", "c", "2026-03", (30_000, 30_000), (31_600, 0), 5.0)
    assert (d.radius_octets, d.router_octets, d.difference_octets) == (30_000, 31_600, 1_600)
    assert (d.difference_pct, d.flagged, d.billed_by) == (5.33, True, "radius")
    nothing = discrepancy("s", "c", "2026-03", (0, 0), (10, 10), 5.0)
    assert (nothing.difference_pct, nothing.flagged, nothing.billed_by) == (None, True, "router")


@pytest.mark.integration
async def test_the_report_reads_the_projection_per_subscription_and_period(store) -> None:
    await report_of_two_subscribers(store, SQLiteReadModels(store))


@pytest.mark.integration
async def test_the_report_on_postgresql(postgres_dsn: str, postgres_schema: str) -> None:
    from ispbill_core.eventstore.postgresql import PostgresEventStore
    from ispbill_core.projections.postgresql import PostgresReadModels

    store = await PostgresEventStore.connect(postgres_dsn, schema=postgres_schema)
    db = await PostgresReadModels.connect(postgres_dsn, schema=postgres_schema)
    try:
        await report_of_two_subscribers(store, db)
    finally:
        await db.close()
        await store.close()


async def report_of_two_subscribers(store: EventStore, db: ReadModelDatabase) -> None:
    await claim(store, subscription("radius", username="alice"))
    await claim(
        store,
        SubscriptionStarted(
            subscription_id="sub-2",
            customer_id="c-2",
            plan_id="home",
            radius_username="bob",
            started_on=date(2026, 1, 1),
        ),
    )
    at = START + timedelta(seconds=600)
    for username, session, (i, o), router in [
        ("alice", "s-1", (10_000, 20_000), (11_000, 21_000)),  # +6.67 %: flagged
        ("bob", "s-2", (50_000, 50_000), (51_000, 50_000)),  # +1 %: not
    ]:
        for r in (
            record(AcctStatus.START, 0, 0, 0, acct_session_id=session, username=username),
            record(AcctStatus.STOP, 600, i, o, acct_session_id=session, username=username),
        ):
            await rate_accounting_record(store, UTC_SETTINGS, message(r))
        await rate(store, sampled(at, *router, username=username, interface=f"<pppoe-{username}>"))

    await Projector(store, db, [UsageBySourceProjection()]).rebuild_now()
    report = await usage_discrepancies(db, period="2026-03")
    assert (report.compared, report.flagged) == (2, 1)
    [alice] = report.discrepancies
    assert (alice.subscription_id, alice.radius_octets, alice.router_octets) == (
        "sub-1",
        30_000,
        32_000,
    )
    assert (alice.difference_octets, alice.difference_pct, alice.billed_by) == (
        2_000,
        6.67,
        "radius",
    )
    everyone = await usage_discrepancies(db, threshold_pct=10.0, include_all=True)
    assert [(d.subscription_id, d.flagged) for d in everyone.discrepancies] == [
        ("sub-1", False),
        ("sub-2", False),
    ]
    assert (await usage_discrepancies(db, period="2026-04", include_all=True)).compared == 0
