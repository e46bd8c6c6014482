"""KafkaBacklog against a real Kafka-protocol broker (Tansu): the receive time of the oldest
record a consumer group has not committed, per the group's real committed offsets."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from ispbill_core.bus import encode_message
from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics, partition_for
from ispbill_core.bus.kafka_backlog import KafkaBacklog, received_at
from ispbill_core.events import EventMetadata, NewEvent
from tests.fixtures.kafka import TansuBroker, free_port

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def _record(n: int, received: datetime) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="AccountingRecordReceived",
        version=1,
        data={"n": n, "received_at": received.isoformat()},
        # published long after it was received (a replay): the receive time is what counts
        metadata=EventMetadata(occurred_at=datetime(2026, 12, 5, tzinfo=UTC)),
    )


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """The group's offsets, committed as a member of it would (without joining it)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


def test_receive_time_is_the_records_not_the_publish_time() -> None:
    assert received_at(_record(1, T0)) == T0
    unreadable = _record(1, T0).model_copy(update={"data": {"received_at": "year zero"}})
    assert received_at(unreadable) == datetime(2026, 12, 5, tzinfo=UTC)
    naive = _record(1, T0).model_copy(update={"data": {"received_at": "2026-03-10T08:00:00"}})
    assert received_at(naive) == T0


async def test_the_oldest_uncommitted_record_holds_deadlines_back(
    kafka_broker: TansuBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic, group = f"backlog-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], 2)
    # Keys that land on partitions 0 and 1: four records each, a minute apart, interleaved.
    keys = {partition_for(f"k{i}".encode(), 2): f"k{i}" for i in range(50)}
    records = [(keys[n % 2], _record(n, T0 + timedelta(minutes=n))) for n in range(8)]
    async with KafkaPublisher(bootstrap) as publisher:
        await publisher.publish(topic, records)
    backlog = KafkaBacklog(bootstrap, group, topic, refresh=0.0)
    try:
        # Nothing committed: the group starts at the beginning, record 0 is the oldest waiting.
        assert await backlog.oldest_waiting() == T0
        assert not await backlog(T0)  # received at the deadline, not before it
        assert await backlog(T0 + timedelta(seconds=1))

        # Partition 0 (records 0, 2, 4, 6) consumed up to record 4; partition 1 (1, 3, 5, 7)
        # up to record 7: record 4 is the oldest waiting.
        p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        await _commit(bootstrap, group, {p0: 2, p1: 3})
        assert await backlog.oldest_waiting() == T0 + timedelta(minutes=4)
        assert not await backlog(T0 + timedelta(minutes=4))
        assert await backlog(T0 + timedelta(minutes=5))

        # Caught up: no deadline waits, however late.
        await _commit(bootstrap, group, {p0: 4, p1: 4})
        assert await backlog.oldest_waiting() is None
        assert not await backlog(datetime(9999, 1, 1, tzinfo=UTC))
    finally:
        await backlog.close()


async def test_measured_at_most_once_per_refresh(kafka_broker: TansuBroker) -> None:
    bootstrap = kafka_broker.bootstrap
    topic, group = f"backlog-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], 1)
    async with KafkaPublisher(bootstrap) as publisher:
        await publisher.publish(topic, [("k", _record(0, T0))])
    now = [0.0]
    backlog = KafkaBacklog(bootstrap, group, topic, refresh=5.0, clock=lambda: now[0])
    try:
        assert await backlog.oldest_waiting() == T0
        await _commit(bootstrap, group, {TopicPartition(topic, 0): 1})
        now[0] = 4.9
        assert await backlog.oldest_waiting() == T0  # the last measure, still fresh
        now[0] = 5.0
        assert await backlog.oldest_waiting() is None
    finally:
        await backlog.close()


async def test_an_unreadable_record_counts_as_the_oldest(kafka_broker: TansuBroker) -> None:
    """A record that is no event envelope (it will be dead-lettered) holds deadlines back
    until the group has gone past it."""
    bootstrap = kafka_broker.bootstrap
    topic, group = f"backlog-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], 1)
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"\xff not json", key=b"k", partition=0)
        await producer.send_and_wait(topic, encode_message(_record(1, T0)), key=b"k", partition=0)
    finally:
        await producer.stop()
    backlog = KafkaBacklog(bootstrap, group, topic, refresh=0.0)
    try:
        assert await backlog(datetime(1, 1, 2, tzinfo=UTC))
        await _commit(bootstrap, group, {TopicPartition(topic, 0): 1})
        assert await backlog.oldest_waiting() == T0
    finally:
        await backlog.close()


async def test_a_broker_out_of_reach_holds_deadlines_back() -> None:
    backlog = KafkaBacklog(
        f"127.0.0.1:{free_port()}", "group", "topic", refresh=0.0, request_timeout=1.0
    )
    try:
        assert await backlog(T0)
    finally:
        await backlog.close()


async def test_a_failed_measure_holds_for_the_refresh_without_asking_again() -> None:
    """Every due timer asking an unreachable broker again, each waiting out the request
    timeout, would stall the timer runner: the failure stands for `refresh` seconds."""
    now = [0.0]
    backlog = KafkaBacklog(
        f"127.0.0.1:{free_port()}",
        "group",
        "topic",
        refresh=5.0,
        request_timeout=1.0,
        clock=lambda: now[0],
    )
    try:
        assert await backlog(T0)
        # no broker call: the held answer, as the oldest there is
        assert await backlog.oldest_waiting() == datetime.min.replace(tzinfo=UTC)
        now[0] = 5.0
        with pytest.raises((OSError, TimeoutError, KafkaError)):
            await backlog.oldest_waiting()  # measured again, and still out of reach
    finally:
        await backlog.close()
