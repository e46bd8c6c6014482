"""The rating worker after its broker lost every topic and consumer group (Tansu with memory
storage restarted on the same port), against a broker of its own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime

import faust
import pytest
from aiokafka import AIOKafkaClient

from ispbill_core.bus.kafka import KafkaPublisher
from ispbill_core.bus.kafka_dead_letters import KafkaDeadLetters, dead_letter_topic
from ispbill_core.events import EventMetadata, NewEvent
from rating.entrypoints.faust_app import create_rating_app, run_rating_worker_recovering
from tests.fixtures.kafka import TansuBroker, TansuNotFound

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """A broker of this test's own: restarting the session's would lose other tests' topics."""
    try:
        tansu = TansuBroker()
    except TansuNotFound as exc:
        pytest.skip(str(exc))
    tansu.start()
    try:
        yield tansu
    finally:
        tansu.stop()


def _record(n: int) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="AccountingRecordReceived",
        version=1,
        data={"n": n},
        metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )


async def _publish(bootstrap: str, topic: str, numbers: range) -> None:
    async with KafkaPublisher(bootstrap) as publisher:
        await publisher.publish(topic, [(f"nas-1/s{n % 5}", _record(n)) for n in numbers])


class _Seen:
    """A batch handler that takes its time (records are in flight when the broker goes)."""

    def __init__(self) -> None:
        self.numbers: set[int] = set()
        self._changed = asyncio.Event()

    async def __call__(self, events: Sequence[NewEvent]) -> None:
        await asyncio.sleep(0.02)
        self.numbers.update(e.data["n"] for e in events)
        self._changed.set()

    async def wait_for(self, numbers: range, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while not set(numbers) <= self.numbers:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def _worker(bootstrap: str, topic: str, app_id: str, seen: _Seen) -> AsyncIterator[None]:
    dead_letters = KafkaDeadLetters(bootstrap, client_id="test-dead-letters")

    async def one(event: NewEvent) -> None:
        await seen([event])

    def app() -> faust.App:
        return create_rating_app(
            broker=bootstrap,
            handler=one,
            batch_handler=seen,
            batch_size=50,
            app_id=app_id,
            fast_join=True,
            topic=topic,
            dead_letters=dead_letters,
        )

    task = asyncio.create_task(
        run_rating_worker_recovering(
            app, broker=bootstrap, topics={topic: 2, dead_letter_topic(topic): 1}, check_every=0.5
        )
    )
    try:
        yield
        assert not task.done(), task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await dead_letters.stop()


async def _topics(bootstrap: str) -> set[str]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        return set((await client.fetch_all_metadata()).topics())
    finally:
        await client.close()


async def _wait_for_topics(bootstrap: str, topics: set[str], timeout: float = 30.0) -> None:
    """Until the broker has `topics` (the worker creates them)."""
    async with asyncio.timeout(timeout):
        while True:
            if topics <= await _topics(bootstrap):
                return
            await asyncio.sleep(0.2)


async def test_the_worker_creates_its_topics_again_and_rates_what_comes_after_a_broker_restart(
    broker: TansuBroker,
) -> None:
    topic = f"test.rating.{uuid.uuid4().hex[:8]}"
    app_id = f"rating-{uuid.uuid4().hex[:6]}"
    seen = _Seen()
    async with _worker(broker.bootstrap, topic, app_id, seen):
        await _wait_for_topics(broker.bootstrap, {topic, dead_letter_topic(topic)})
        await _publish(broker.bootstrap, topic, range(1000))
        await seen.wait_for(range(100))

        # Mid-stream: the broker comes back empty, on the same port, and a producer publishes
        # at once, as the collector does: the broker creates the topic as it publishes (with
        # its default partition count). Before the worker recovered, faust stayed on the
        # partitions it knew of a topic that did not exist then, and rated none of these.
        await asyncio.to_thread(broker.restart)
        await _publish(broker.bootstrap, topic, range(5000, 5300))
        await seen.wait_for(range(5000, 5300))
        assert dead_letter_topic(topic) in await _topics(broker.bootstrap), "created again"

    # A later worker of the group starts from what was committed in the new group: nothing
    # published to the new topic is skipped.
    await _publish(broker.bootstrap, topic, range(6000, 6300))
    later = _Seen()
    async with _worker(broker.bootstrap, topic, app_id, later):
        await later.wait_for(range(6000, 6300))
