"""The rating faust app against a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import faust
import pytest
from aiokafka import AIOKafkaProducer

from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
from ispbill_core.events import EventMetadata, NewEvent
from rating.entrypoints.faust_app import create_rating_app, run_rating_worker
from tests.fixtures.kafka import TansuBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _record(n: int) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="AccountingRecordReceived",
        version=1,
        data={"n": n},
        metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )


class _Handled:
    """An injected handler that records what it saw and can fail on one record."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.seen: list[int] = []
        self.fail_on = fail_on
        self._changed = asyncio.Event()

    async def __call__(self, event: NewEvent) -> None:
        n = event.data["n"]
        if n == self.fail_on:
            raise RuntimeError(f"rating failed on {n}")
        self.seen.append(n)
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(60):
            while len(self.seen) < count:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def _worker(
    bootstrap: str, topic: str, app_id: str, handler: Callable[[NewEvent], object]
) -> AsyncIterator[asyncio.Task[None]]:
    app = create_rating_app(
        broker=bootstrap,
        handler=handler,
        app_id=app_id,
        fast_join=True,
        topic=topic,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(run_rating_worker(app))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _publish(bootstrap: str, topic: str, numbers: range) -> None:
    async with KafkaPublisher(bootstrap) as publisher:
        await publisher.publish(topic, [(f"nas-1/s{n % 2}", _record(n)) for n in numbers])


@pytest.fixture
async def topic(kafka_broker: TansuBroker) -> str:
    name = f"test.rating.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_broker.bootstrap, [name], 2)
    return name


async def test_records_reach_the_handler_once_across_worker_restarts(
    kafka_broker: TansuBroker, topic: str
) -> None:
    app_id = f"rating-{uuid.uuid4().hex[:6]}"
    await _publish(kafka_broker.bootstrap, topic, range(5))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    try:  # not an envelope: skipped, and must not block its partition
        await producer.send_and_wait(topic, b"garbage", key=b"nas-1/s0")
    finally:
        await producer.stop()
    await _publish(kafka_broker.bootstrap, topic, range(5, 6))

    first = _Handled()
    async with _worker(kafka_broker.bootstrap, topic, app_id, first):
        await first.wait_for(6)
    assert sorted(first.seen) == list(range(6))

    await _publish(kafka_broker.bootstrap, topic, range(6, 9))
    second = _Handled()
    async with _worker(kafka_broker.bootstrap, topic, app_id, second):
        await second.wait_for(3)
        await asyncio.sleep(1)  # time for a wrongly redelivered record to show up
    assert sorted(second.seen) == [6, 7, 8]
    for key_parity in (0, 1):  # in order per key
        assert [n for n in second.seen if n % 2 == key_parity] == sorted(
            n for n in second.seen if n % 2 == key_parity
        )


async def test_a_failed_record_stops_the_worker_and_is_delivered_again(
    kafka_broker: TansuBroker, topic: str
) -> None:
    app_id = f"rating-{uuid.uuid4().hex[:6]}"
    # One partition's order: 0 2 4 6 (key s0), the other's 1 3 5 7 (key s1); 4 fails.
    await _publish(kafka_broker.bootstrap, topic, range(8))

    failing = _Handled(fail_on=4)
    app = create_rating_app(
        broker=kafka_broker.bootstrap, handler=failing, app_id=app_id, fast_join=True, topic=topic
    )
    with pytest.raises(RuntimeError, match="rating failed on 4"):
        await asyncio.wait_for(run_rating_worker(app), 60)
    assert 4 not in failing.seen
    assert 6 not in failing.seen, "records after the failed one on its partition wait for it"

    healthy = _Handled()
    async with _worker(kafka_broker.bootstrap, topic, app_id, healthy):
        await healthy.wait_for(2)
        await asyncio.sleep(1)
    assert 4 in healthy.seen and 6 in healthy.seen
    assert set(failing.seen) | set(healthy.seen) == set(range(8))
    assert not {0, 2} & set(healthy.seen), "what succeeded before the failure stays committed"


class _Batches:
    """A batch handler that records the batches it saw and can fail on the batch with one
    record in it."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self._changed = asyncio.Event()

    async def __call__(self, events: Sequence[NewEvent]) -> None:
        numbers = [e.data["n"] for e in events]
        if self.fail_on in numbers:
            raise RuntimeError(f"rating failed on a batch with {self.fail_on}")
        self.batches.append(numbers)
        self._changed.set()

    @property
    def seen(self) -> list[int]:
        return [n for batch in self.batches for n in batch]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(60):
            while len(set(self.seen)) < count:
                self._changed.clear()
                await self._changed.wait()


async def _batch_worker(bootstrap: str, topic: str, app_id: str, handler: _Batches) -> faust.App:
    async def one(event: NewEvent) -> None:  # pragma: no cover - the batch path is taken
        raise AssertionError("the batch handler takes every record")

    return create_rating_app(
        broker=bootstrap,
        handler=one,
        batch_handler=handler,
        batch_size=50,
        app_id=app_id,
        fast_join=True,
        topic=topic,
    )


async def test_batches_are_acked_after_the_handler_and_a_failed_batch_comes_again(
    kafka_broker: TansuBroker, topic: str
) -> None:
    app_id = f"rating-{uuid.uuid4().hex[:6]}"
    await _publish(kafka_broker.bootstrap, topic, range(300))
    failing = _Batches(fail_on=250)
    app = await _batch_worker(kafka_broker.bootstrap, topic, app_id, failing)
    with pytest.raises(RuntimeError, match="failed on a batch with 250"):
        await asyncio.wait_for(run_rating_worker(app), 60)
    assert 250 not in failing.seen
    assert max(len(b) for b in failing.batches) > 1, "records arrive in batches"
    assert all(len(b) <= 50 for b in failing.batches)

    healthy = _Batches()
    app = await _batch_worker(kafka_broker.bootstrap, topic, app_id, healthy)
    task = asyncio.create_task(run_rating_worker(app))
    try:
        await healthy.wait_for(300 - len(set(failing.seen)))
        await asyncio.sleep(1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert set(failing.seen) | set(healthy.seen) == set(range(300))
    assert 250 in healthy.seen
    for key_parity in (0, 1):  # in order per key, within each worker
        mine = [n for n in healthy.seen if n % 2 == key_parity]
        assert mine == sorted(mine)


async def test_router_counter_samples_reach_their_own_agent_beside_the_records(
    kafka_broker: TansuBroker, topic: str
) -> None:
    counters_topic = f"{topic}.counters"
    await ensure_topics(kafka_broker.bootstrap, [counters_topic], 2)
    records, samples = _Handled(), _Handled()

    async def sample_batch(batch: Sequence[NewEvent]) -> None:
        for event in batch:
            await samples(event)

    app = create_rating_app(
        broker=kafka_broker.bootstrap,
        handler=records,
        app_id=f"rating-{uuid.uuid4().hex[:6]}",
        fast_join=True,
        topic=topic,
        counters_handler=sample_batch,
        counters_topic=counters_topic,
    )
    task = asyncio.create_task(run_rating_worker(app))
    try:
        await _publish(kafka_broker.bootstrap, topic, range(3))
        await _publish(kafka_broker.bootstrap, counters_topic, range(100, 104))
        await records.wait_for(3)
        await samples.wait_for(4)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sorted(records.seen) == [0, 1, 2]
    assert sorted(samples.seen) == [100, 101, 102, 103]
