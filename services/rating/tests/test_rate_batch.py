"""rate_accounting_batch gives the ledger exactly what rating the records one by one gives:
the same events, in the same streams, whatever the batches, orders, duplicates and reboots."""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispbill_core.contracts.accounts import (
    RadiusUsernameAssigned,
    RadiusUsernameReleased,
    SubscriptionStarted,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from rating.application.rate_accounting_record import (
    rate_accounting_record,
    session_index_stream,
)
from rating.application.rate_batch import RatingCache, rate_accounting_batch
from tests.fixtures.radius import GIGAWORD, START, UTC_SETTINGS, claim, message, nas_event, record

pytestmark = pytest.mark.integration

USERS = ("alice", "bob", None)  # alice has a subscription, bob has none (unmatched), None no name


@st.composite
def traffic(draw: st.DrawFn) -> list[AccountingRecordReceived]:
    """A few sessions on one NAS, interleaved, with duplicates and maybe a reboot."""
    records: list[AccountingRecordReceived] = []
    for s in range(draw(st.integers(1, 3))):
        user = draw(st.sampled_from(USERS))
        start = START + timedelta(minutes=draw(st.integers(0, 30)))
        session = [
            record(AcctStatus.START, 0, 0, 0, start=start, acct_session_id=f"s-{s}", username=user)
        ]
        seconds = cum_in = cum_out = 0
        for i in range(draw(st.integers(0, 4))):
            seconds += draw(st.integers(1, 900))
            cum_in += draw(st.integers(0, 3 * GIGAWORD))
            cum_out += draw(st.integers(0, 1000))
            status = AcctStatus.STOP if i == 3 else AcctStatus.INTERIM_UPDATE
            session.append(
                record(
                    status,
                    seconds,
                    cum_in,
                    cum_out,
                    start=start,
                    acct_session_id=f"s-{s}",
                    username=user,
                )
            )
        records += session
    if draw(st.booleans()):
        records.append(nas_event(AcctStatus.ACCOUNTING_ON, START + timedelta(minutes=45)))
    extra = draw(st.lists(st.sampled_from(records), max_size=3))
    return draw(st.permutations(records + extra))


async def ledger(store: SQLiteEventStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every stream's events (id, type, data), each stream in its order."""
    streams: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for e in await store.read_all(after=0, limit=100_000):
        streams[e.stream].append((e.id, e.type, e.data, e.metadata.causation_id))
    return dict(streams)


async def fresh_store(tmp: str, name: str) -> SQLiteEventStore:
    store = SQLiteEventStore(Path(tmp) / f"{name}.db", synchronous="OFF")
    await claim(
        store,
        SubscriptionStarted(
            subscription_id="sub-1",
            customer_id="c-1",
            plan_id="home",
            radius_username="alice",
            started_on=date(2026, 1, 1),
        ),
    )
    return store


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(traffic(), st.lists(st.integers(1, 6), min_size=1, max_size=12))
def test_a_batch_records_what_one_by_one_records(
    delivered: list[AccountingRecordReceived], sizes: list[int]
) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            one_by_one = await fresh_store(tmp, "one")
            batched = await fresh_store(tmp, "batch")
            try:
                for r in delivered:
                    await rate_accounting_record(one_by_one, UTC_SETTINGS, message(r))
                messages = [message(r) for r in delivered]
                cache = RatingCache()  # kept from batch to batch, as a worker keeps it
                at, n = 0, 0
                while at < len(messages):
                    size = sizes[n % len(sizes)]
                    chunk = messages[at : at + size]
                    await rate_accounting_batch(batched, UTC_SETTINGS, chunk, cache)
                    at, n = at + size, n + 1
                expected = await ledger(one_by_one)
                assert await ledger(batched) == expected
                # delivered again (a consumer restarting from an old offset): nothing changes
                await rate_accounting_batch(batched, UTC_SETTINGS, messages)
                assert await ledger(batched) == expected
                usage = await all_events_of(batched, UsageRated)
                assert len({u.record_id for u in usage}) == len(usage)
            finally:
                await one_by_one.close()
                await batched.close()

    asyncio.run(scenario())


async def test_one_append_for_a_batch_of_many_sessions(tmp_path: Path) -> None:
    """The point of batching: 200 records of 50 sessions are one append_many, not 600 appends,
    and a few reads of many streams each, not 400 reads."""
    store = await fresh_store(str(tmp_path), "ledger")
    calls = {"append": 0, "append_many": 0}
    append, append_many = store.append, store.append_many

    async def counting_append(*args: Any, **kwargs: Any) -> int:
        calls["append"] += 1
        return await append(*args, **kwargs)

    async def counting_append_many(*args: Any, **kwargs: Any) -> list[int]:
        calls["append_many"] += 1
        return await append_many(*args, **kwargs)

    reads = {"read_stream": 0, "read_streams": 0}
    read_stream, read_streams = store.read_stream, store.read_streams

    async def counting_read_stream(*args: Any, **kwargs: Any) -> Any:
        reads["read_stream"] += 1
        return await read_stream(*args, **kwargs)

    async def counting_read_streams(*args: Any, **kwargs: Any) -> Any:
        reads["read_streams"] += 1
        return await read_streams(*args, **kwargs)

    store.read_stream = counting_read_stream  # type: ignore[method-assign]
    store.read_streams = counting_read_streams  # type: ignore[method-assign]
    store.append = counting_append  # type: ignore[method-assign]
    store.append_many = counting_append_many  # type: ignore[method-assign]
    try:
        records = [
            record(status, seconds, seconds * 1000, seconds * 10, acct_session_id=f"s-{s}")
            for s in range(50)
            for status, seconds in (
                (AcctStatus.START, 0),
                (AcctStatus.INTERIM_UPDATE, 300),
                (AcctStatus.INTERIM_UPDATE, 600),
                (AcctStatus.STOP, 900),
            )
        ]
        rated = await rate_accounting_batch(store, UTC_SETTINGS, [message(r) for r in records])
        assert calls == {"append": 0, "append_many": 1}
        # indexes, sessions, claims, subscriptions, plans, invoices: one query each
        assert reads["read_stream"] == 0 and reads["read_streams"] <= 6
        assert len(rated) == 150 and sum(u.input_octets for u in rated) == 50 * 900_000
    finally:
        await store.close()


async def test_the_checkpoint_moves_with_the_batch(tmp_path: Path) -> None:
    store = await fresh_store(str(tmp_path), "ledger")
    try:
        records = [
            record(AcctStatus.START, 0, 0, 0),
            record(AcctStatus.INTERIM_UPDATE, 300, 5, 5),
            record(AcctStatus.INTERIM_UPDATE, 300, 9, 9, username="bob", acct_session_id="b"),
        ]
        await rate_accounting_batch(
            store, UTC_SETTINGS, [message(r) for r in records], checkpoint=("rating", 77)
        )
        assert await store.load_checkpoint("rating") == 77
        # a batch with nothing to write (all seen) still moves it
        await rate_accounting_batch(
            store, UTC_SETTINGS, [message(r) for r in records], checkpoint=("rating", 80)
        )
        assert await store.load_checkpoint("rating") == 80
        # only a reboot: no run after it, the checkpoint still moves
        reboot = nas_event(AcctStatus.ACCOUNTING_ON, START + timedelta(hours=2))
        await rate_accounting_batch(
            store, UTC_SETTINGS, [message(reboot)], checkpoint=("rating", 90)
        )
        assert await store.load_checkpoint("rating") == 90
    finally:
        await store.close()


async def test_usage_of_a_username_claimed_during_the_batch_is_rated(tmp_path: Path) -> None:
    """The subscription for bob is recorded after the batch read bob's claims and before its
    append: the batch keeps the usage unmatched, looks again, and rates it (as one record
    at a time does), and it is in the customer's usage stream, not a stream of another name."""
    store = await fresh_store(str(tmp_path), "ledger")
    append_many = store.append_many
    claimed = False

    async def claim_first(*args: Any, **kwargs: Any) -> list[int]:
        nonlocal claimed
        if not claimed:
            claimed = True
            await claim(
                store,
                SubscriptionStarted(
                    subscription_id="sub-bob",
                    customer_id="c-bob",
                    plan_id="home",
                    radius_username="bob",
                    started_on=date(2026, 1, 1),
                ),
            )
        return await append_many(*args, **kwargs)

    store.append_many = claim_first  # type: ignore[method-assign]
    try:
        records = [
            record(AcctStatus.START, 0, 0, 0, username="bob", acct_session_id="b"),
            record(
                AcctStatus.INTERIM_UPDATE, 300, 1_000, 2_000, username="bob", acct_session_id="b"
            ),
        ]
        rated = await rate_accounting_batch(
            store, UTC_SETTINGS, [message(r) for r in records], checkpoint=("rating", 5)
        )
        assert [(u.customer_id, u.input_octets, u.output_octets) for u in rated] == [
            ("c-bob", 1_000, 2_000)
        ]
        [usage] = await store.read_stream("usage-c-bob-2026-03")
        assert usage.data["input_octets"] == 1_000
        assert len(await store.read_stream("unmatched-usage-bob")) == 1
        assert await store.load_checkpoint("rating") == 5
    finally:
        await store.close()


async def test_a_batch_whose_session_another_writer_partly_recorded_is_read_again(
    tmp_path: Path,
) -> None:
    """Another worker (a Kafka redelivery after a rebalance) recorded the first of a session's
    records while this worker's cache knew nothing of it: the batch meets its id, reads the
    session again, and records the rest once."""
    store = await fresh_store(str(tmp_path), "ledger")
    try:
        records = [
            record(AcctStatus.START, 0, 0, 0),
            record(AcctStatus.INTERIM_UPDATE, 300, 1_000, 2_000),
            record(AcctStatus.INTERIM_UPDATE, 600, 1_500, 2_500),
        ]
        cache = RatingCache()
        await rate_accounting_batch(store, UTC_SETTINGS, [message(records[0])], cache)
        # the other worker, without this cache, rates the first interim
        await rate_accounting_batch(store, UTC_SETTINGS, [message(records[1])])
        await rate_accounting_batch(store, UTC_SETTINGS, [message(r) for r in records], cache)
        usage = await all_events_of(store, UsageRated)
        assert sorted((u.input_octets, u.output_octets) for u in usage) == [
            (500, 500),
            (1_000, 2_000),
        ]
        [opened] = await store.read_stream(session_index_stream("nas-1", "s-1"))
        assert len(await store.read_stream(f"session-{opened.data['session_key']}")) == 3
    finally:
        await store.close()


async def test_a_reused_session_id_after_a_cached_one_needs_no_second_read(
    tmp_path: Path,
) -> None:
    """The cache keeps the index's version with the session it opened: a NAS that reuses the
    Acct-Session-Id later opens the second session at the right version, without a conflict."""
    store = await fresh_store(str(tmp_path), "ledger")
    try:
        cache = RatingCache()
        other = record(AcctStatus.INTERIM_UPDATE, 60, 5, 5, acct_session_id="other")
        first = record(AcctStatus.STOP, 300, 10, 10)
        later = START + timedelta(hours=3)
        second = record(AcctStatus.INTERIM_UPDATE, 300, 20, 20, start=later)
        await rate_accounting_batch(store, UTC_SETTINGS, [message(other), message(first)], cache)
        await rate_accounting_batch(store, UTC_SETTINGS, [message(second)], cache)
        # a conflict would have emptied the cache, the other session's index with it
        assert session_index_stream("nas-1", "other") in cache.indexes
        assert len(await store.read_stream(session_index_stream("nas-1", "s-1"))) == 2
    finally:
        await store.close()


async def test_a_username_given_to_another_subscription_rates_to_it_from_the_next_batch(
    tmp_path: Path,
) -> None:
    """The cache follows the ledger's changes: no stale holder after a username moves."""
    store = await fresh_store(str(tmp_path), "ledger")
    try:
        await claim(
            store,
            SubscriptionStarted(
                subscription_id="sub-1",
                customer_id="c-1",
                plan_id="home",
                radius_username="alice",
                started_on=date(2026, 1, 1),
            ),
        )
        cache = RatingCache()
        first = record(AcctStatus.INTERIM_UPDATE, 60, 100, 0, acct_session_id="a")
        await rate_accounting_batch(store, UTC_SETTINGS, [message(first)], cache)
        released = RadiusUsernameReleased(
            username="alice", subscription_id="sub-1", released_on=date(2026, 3, 9)
        )
        second = SubscriptionStarted(
            subscription_id="sub-2",
            customer_id="c-2",
            plan_id="home",
            radius_username="alice",
            started_on=date(2026, 3, 10),
        )
        assigned = RadiusUsernameAssigned(
            username="alice", customer_id="c-2", subscription_id="sub-2"
        )
        for stream, event in (
            (radius_user_stream("alice"), released),
            (radius_user_stream("alice"), assigned),
            (subscription_stream("sub-2"), second),
        ):
            await store.append(
                stream, [new_event(event, id=deterministic_id(event), occurred_at=START)], ANY
            )
        later = record(AcctStatus.INTERIM_UPDATE, 60, 50, 0, acct_session_id="b")
        await rate_accounting_batch(store, UTC_SETTINGS, [message(later)], cache)
        usage = await all_events_of(store, UsageRated)
        assert sorted((u.customer_id, u.input_octets) for u in usage) == [
            ("c-1", 100),
            ("c-2", 50),
        ]
    finally:
        await store.close()
