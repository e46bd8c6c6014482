"""The rating faust app's dead-letter topic, with the real rating use case on a SQLite ledger and
a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import date
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from ispbill_core.bus import encode_message
from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
from ispbill_core.bus.kafka_dead_letters import (
    KafkaDeadLetters,
    dead_letter_topic,
    read_dead_letters,
    replay_dead_letters,
)
from ispbill_core.contracts.accounts import SubscriptionStarted
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import AcctStatus, accounting_key
from ispbill_core.events import NewEvent
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from rating.application.rate_accounting_record import rate_accounting_record
from rating.application.rate_batch import RatingCache, rate_accounting_batch
from rating.entrypoints.faust_app import create_rating_app, run_rating_worker
from tests.fixtures.kafka import TansuBroker
from tests.fixtures.radius import GIGAWORD, UTC_SETTINGS, claim, message, record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SESSIONS = 4


def _session(n: int) -> list[NewEvent]:
    """Start, an interim and a Stop of session `s-<n>` (alice's), as the collector publishes."""
    sid = f"s-{n}"
    return [
        message(record(AcctStatus.START, 0, 0, 0, acct_session_id=sid)),
        message(
            record(AcctStatus.INTERIM_UPDATE, 60, GIGAWORD + n, 5_000 + n, acct_session_id=sid)
        ),
        message(record(AcctStatus.STOP, 120, 2 * GIGAWORD + n, 9_000 + n, acct_session_id=sid)),
    ]


def _poison() -> NewEvent:
    """A well-formed envelope whose record no rating can accept (negative counters): it came
    from another writer, or an older collector with a bug."""
    good = message(record(AcctStatus.INTERIM_UPDATE, 30, 1, 1, acct_session_id="s-0"))
    return good.model_copy(update={"id": uuid.uuid4(), "data": {**good.data, "input_octets": -1}})


class _Rating:
    """The rating use case as `serve rating` wires it, failing transiently at first."""

    def __init__(self, store: SQLiteEventStore, transient_failures: int = 0) -> None:
        self.store = store
        self.cache = RatingCache()
        self.transient_failures = transient_failures

    async def one(self, event: NewEvent) -> None:
        await rate_accounting_record(self.store, UTC_SETTINGS, event)

    async def batch(self, events: Sequence[NewEvent]) -> None:
        if self.transient_failures:
            self.transient_failures -= 1
            raise ConnectionResetError("the ledger went away")
        await rate_accounting_batch(self.store, UTC_SETTINGS, events, self.cache)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    """A ledger where alice has a subscription."""
    ledger = SQLiteEventStore(tmp_path / "ledger.db")
    await claim(
        ledger,
        SubscriptionStarted(
            subscription_id="sub-1",
            customer_id="c-1",
            plan_id="home",
            radius_username="alice",
            started_on=date(2026, 1, 1),
        ),
    )
    yield ledger
    await ledger.close()


async def _wait(probe: Callable[[], Awaitable[bool] | bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            done = probe()
            if await done if inspect.isawaitable(done) else done:
                return
            await asyncio.sleep(0.1)


async def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_worker_goes_on(
    kafka_broker: TansuBroker, store: SQLiteEventStore
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = f"test.rating.{uuid.uuid4().hex[:8]}"
    dlq = dead_letter_topic(topic)
    await ensure_topics(bootstrap, [topic], 2)
    await ensure_topics(bootstrap, [dlq], 1)
    sessions = [_session(n) for n in range(SESSIONS)]
    poison = _poison()
    # Among the good records: the poison record, and bytes that are no envelope at all.
    async with KafkaPublisher(bootstrap) as publisher:
        for n, events in enumerate(sessions[:2]):
            key = accounting_key("nas-1", f"s-{n}")
            await publisher.publish(topic, [(key, events[0]), (key, events[1])])
        await publisher.publish(topic, [(accounting_key("nas-1", "s-0"), poison)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, b"\x00garbage", key=b"nas-1/s-1", headers=[("traceparent", b"00-abc")]
        )
    finally:
        await producer.stop()
    async with KafkaPublisher(bootstrap) as publisher:
        for n, events in enumerate(sessions[:2]):
            await publisher.publish(topic, [(accounting_key("nas-1", f"s-{n}"), events[2])])

    rating = _Rating(store, transient_failures=2)
    dead_letters = KafkaDeadLetters(bootstrap, client_id="test-dead-letters")
    app = create_rating_app(
        broker=bootstrap,
        handler=rating.one,
        batch_handler=rating.batch,
        batch_size=50,
        app_id=f"rating-{uuid.uuid4().hex[:6]}",
        fast_join=True,
        topic=topic,
        dead_letters=dead_letters,
        max_backoff=0.2,
    )
    worker = asyncio.create_task(run_rating_worker(app))

    async def usage() -> int:
        rated = await all_events_of(store, UsageRated)
        return sum(u.input_octets + u.output_octets for u in rated)

    async def _usage_is(octets: int) -> bool:
        return await usage() == octets

    def expected(sessions_: Sequence[list[NewEvent]]) -> int:
        return sum(e[-1].data["input_octets"] + e[-1].data["output_octets"] for e in sessions_)

    try:
        await _wait(lambda: _usage_is(expected(sessions[:2])))
        await _wait(lambda: app.rating.dead_lettered == 2)

        letters = await read_dead_letters(bootstrap, dlq)
        assert len(letters) == 2
        garbage = next(letter for letter in letters if letter.value == b"\x00garbage")
        assert garbage.key == b"nas-1/s-1"
        assert garbage.headers == (("traceparent", b"00-abc"),), "its own headers kept"
        assert garbage.error == "ispbill_core.bus.UndecodableMessage"
        assert "not an ispbill event envelope" in garbage.reason
        bad = next(letter for letter in letters if letter.value == encode_message(poison))
        assert bad.key == accounting_key("nas-1", "s-0").encode()
        assert bad.error.endswith("ValidationError")
        assert "input_octets" in bad.reason
        assert (bad.topic, bad.partition, bad.consumer) == (topic, bad.partition, app.conf.id)
        assert bad.offset >= 0 and bad.at.tzinfo is not None
        assert app.rating.retries >= 2, "the transient failures were retried"
        assert rating.transient_failures == 0

        # The worker goes on: later records are rated.
        async with KafkaPublisher(bootstrap) as publisher:
            await publisher.publish(
                topic,
                [(accounting_key("nas-1", f"s-{n}"), e) for n in (2, 3) for e in sessions[n]],
            )
        await _wait(lambda: _usage_is(expected(sessions)))
        assert not worker.done()

        # Replayed, the poison record fails again and is dead-lettered again, saying so.
        await replay_dead_letters(bootstrap, [bad], dead_letter_topic_name=dlq)
        await _wait(lambda: app.rating.dead_lettered == 3)
        again = (await read_dead_letters(bootstrap, dlq))[-1]
        assert again.value == bad.value
        assert again.replayed_from == f"{dlq}/0/{bad.dead_letter_offset}"
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await dead_letters.stop()
    assert await usage() == expected(sessions), "nothing rated twice"
    rated = await all_events_of(store, UsageRated)
    assert len({u.record_id for u in rated}) == len(rated)
