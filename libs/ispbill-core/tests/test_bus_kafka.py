"""KafkaPublisher against a real Kafka-protocol broker (Tansu), read back with aiokafka."""

from __future__ import annotations

import asyncio
import collections
import gc
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from ispbill_core.bus import (
    TRACEPARENT_HEADER,
    BusError,
    BusUnavailable,
    decode_message,
    encode_message,
)
from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics, partition_for
from ispbill_core.events import AnyNewEvent, EventMetadata, NewEvent
from tests.fixtures.kafka import TansuBroker

pytestmark = pytest.mark.integration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _event(n: int, *, traceparent: str | None = TRACEPARENT, **extra: object) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="Tested",
        version=1,
        data={"n": n, **extra},
        metadata=EventMetadata(
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC), traceparent=traceparent
        ),
    )


async def _consume_all(
    bootstrap: str, topic: str, count: int, *, polls: int = 50
) -> list[tuple[str, NewEvent, dict[str, bytes], int]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
            partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        got: list[tuple[str, NewEvent, dict[str, bytes], int]] = []
        for _ in range(polls):
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    assert record.key is not None and record.value is not None
                    got.append(
                        (
                            record.key.decode(),
                            decode_message(record.value),
                            dict(record.headers),
                            tp.partition,
                        )
                    )
            if len(got) >= count:
                return got
        return got
    finally:
        await consumer.stop()


def test_envelope_round_trips_through_json() -> None:
    event = _event(1)
    assert decode_message(encode_message(event)) == event


def test_a_value_that_is_not_an_envelope_is_a_bus_error() -> None:
    with pytest.raises(BusError):
        decode_message(b'{"hello": "world"}')


async def test_published_batch_is_consumed_with_keys_headers_and_order_per_key(
    kafka_broker: TansuBroker,
) -> None:
    topic = f"test.bus.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_broker.bootstrap, [topic], 3)
    await ensure_topics(kafka_broker.bootstrap, [topic], 3)  # idempotent
    keys = ["nas-1/a", "nas-1/b", "nas-2/a", "nas-3/z"]
    batch = [(keys[n % len(keys)], _event(n)) for n in range(40)]
    batch.append(("nas-9/untraced", _event(99, traceparent=None)))

    async with KafkaPublisher(kafka_broker.bootstrap, client_id="test-bus") as publisher:
        await publisher.publish(topic, batch[:20])
        await publisher.publish(topic, batch[20:])

    got = await _consume_all(kafka_broker.bootstrap, topic, len(batch))
    assert sorted(str(e.id) for _, e, _, _ in got) == sorted(str(e.id) for _, e in batch)
    by_id = {e.id: (key, headers) for key, e, headers, _ in got}
    for key, event in batch:
        got_key, headers = by_id[event.id]
        assert got_key == key
        if event.metadata.traceparent is None:
            assert TRACEPARENT_HEADER not in headers
        else:
            assert headers[TRACEPARENT_HEADER] == TRACEPARENT.encode()
    for key in keys:
        sent = [e.data["n"] for k, e in batch if k == key]
        received = [e.data["n"] for k, e, _, _ in got if k == key]
        assert received == sent
        assert len({p for k, _, _, p in got if k == key}) == 1
    assert len({p for *_, p in got}) > 1, "keys should spread over partitions"


@given(key=st.binary(max_size=64), partitions=st.integers(min_value=1, max_value=1000))
def test_partition_for_is_kafkas_default_partitioner(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, every, every)
    # Cached per key: the same answer again, and for another partition count.
    assert partition_for(key, partitions) == DefaultPartitioner()(key, every, every)
    assert partition_for(key, partitions + 1) == DefaultPartitioner()(
        key, [*every, partitions], [*every, partitions]
    )


async def test_a_publish_bigger_than_a_record_batch_is_split_in_order_per_key(
    kafka_broker: TansuBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"test.bus.{uuid.uuid4().hex[:8]}"
    partitions = 3
    await ensure_topics(kafka_broker.bootstrap, [topic], partitions)
    # What the publisher hands the producer, batch by batch (and then sends as it is).
    sent: list[tuple[int, int, int]] = []
    send_batch = AIOKafkaProducer.send_batch

    async def recording_send_batch(
        self: AIOKafkaProducer, batch: object, topic: str, *, partition: int
    ) -> object:
        sent.append((partition, batch.record_count(), batch.size()))  # type: ignore[attr-defined]
        return await send_batch(self, batch, topic, partition=partition)

    monkeypatch.setattr(AIOKafkaProducer, "send_batch", recording_send_batch)
    keys = [f"nas-{k}/session-{k * 7919}" for k in range(11)]
    messages: list[tuple[str, AnyNewEvent]] = []
    for n in range(360):
        # One message bigger than a whole record batch: it goes in a batch of its own.
        padding = "·" * (6000 if n == 100 else n % 50)
        new = _event(n, padding=padding, traceparent=TRACEPARENT if n % 3 else None)
        messages.append((keys[(n * 7) % len(keys)], new.encoded() if n % 2 else new))
    total = sum(len(encode_message(e)) for _, e in messages)
    assert total > 20 * 4096

    async with KafkaPublisher(
        kafka_broker.bootstrap, client_id="test-bus-split", max_batch_bytes=4096
    ) as publisher:
        await publisher.publish(topic, messages)
        publishes = len(sent)
        await publisher.publish(topic, messages[:5])  # a small one after: one batch each

    assert sum(records for _, records, _ in sent[:publishes]) == len(messages)
    per_partition = collections.Counter(p for p, _, _ in sent[:publishes])
    assert set(per_partition) == {partition_for(k.encode(), partitions) for k in keys}
    assert all(count > 1 for count in per_partition.values()), per_partition
    assert all(size <= 4096 for _, records, size in sent if records > 1), sent
    assert [records for _, records, size in sent if size > 4096] == [1]
    assert len(sent) - publishes == len(
        {partition_for(k.encode(), partitions) for k, _ in messages[:5]}
    )

    expected = len(messages) + 5
    got = await _consume_all(kafka_broker.bootstrap, topic, expected, polls=100)
    assert len(got) == expected
    assert {e.id for _, e, _, _ in got} == {uuid.UUID(str(e.id)) for _, e in messages}
    for _, event, headers, _ in got:
        traced = event.metadata.traceparent is not None
        assert headers.get(TRACEPARENT_HEADER) == (TRACEPARENT.encode() if traced else None)
    for key in keys:
        sent_in_order = [e.data["n"] for k, e in [*messages, *messages[:5]] if k == key]
        received = [e.data["n"] for k, e, _, _ in got if k == key]
        assert received == sent_in_order, key
        assert {p for k, _, _, p in got if k == key} == {partition_for(key.encode(), partitions)}


async def test_published_encoded_events_decode_with_their_traceparent(
    kafka_broker: TansuBroker,
) -> None:
    topic = f"test.bus.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_broker.bootstrap, [topic], 2)
    originals = [
        ("nas-1/a", _event(1, name="Fibre 100 — März")),
        ("nas-1/a", _event(2, traceparent=None)),
        ("nas-2/b", _event(3, nested={"octets": 2**40, "none": None})),
    ]
    async with KafkaPublisher(kafka_broker.bootstrap, client_id="test-bus-encoded") as publisher:
        await publisher.publish(topic, [(key, event.encoded()) for key, event in originals])

    got = await _consume_all(kafka_broker.bootstrap, topic, len(originals))
    by_id = {event.id: (key, event, headers, p) for key, event, headers, p in got}
    assert len(got) == len(by_id) == len(originals)
    for key, original in originals:
        got_key, event, headers, partition = by_id[original.id]
        assert (got_key, event) == (key, original)
        assert partition == partition_for(key.encode(), 2)
        if original.metadata.traceparent is None:
            assert TRACEPARENT_HEADER not in headers
        else:
            assert headers[TRACEPARENT_HEADER] == TRACEPARENT.encode()
    assert [e.data["n"] for k, e, _, _ in got if k == "nas-1/a"] == [1, 2]


async def test_publish_before_start_is_an_error(kafka_broker: TansuBroker) -> None:
    publisher = KafkaPublisher(kafka_broker.bootstrap)
    with pytest.raises(BusError):
        await publisher.publish("any", [("k", _event(1))])


async def test_publish_to_an_unresponsive_broker_raises_bus_unavailable(
    kafka_broker: TansuBroker,
) -> None:
    topic = f"test.bus.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_broker.bootstrap, [topic], 1)
    publisher = KafkaPublisher(
        kafka_broker.bootstrap, delivery_timeout=1.5, request_timeout_ms=1000
    )
    await publisher.start()
    try:
        await publisher.publish(topic, [("k", _event(0))])
        kafka_broker.pause()
        try:
            with pytest.raises(BusUnavailable):
                await publisher.publish(topic, [("k", _event(1))])
        finally:
            kafka_broker.resume()
    finally:
        await publisher.stop()


async def test_a_start_cancelled_against_a_hung_broker_leaves_no_client_behind(
    kafka_broker: TansuBroker,
) -> None:
    reported: list[object] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context.get("message")))
    try:
        publisher = KafkaPublisher(kafka_broker.bootstrap, delivery_timeout=30)
        kafka_broker.pause()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(publisher.start(), 1.0)  # a caller's own timeout
        finally:
            kafka_broker.resume()
        del publisher
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(None)
    # aiokafka reports a producer that was never stopped when it is collected.
    assert not [m for m in reported if "Unclosed AIOKafkaProducer" in str(m)], reported


async def test_standalone_broker_restarts_on_its_port_with_empty_storage() -> None:
    broker = TansuBroker()
    broker.start()
    try:
        port = broker.port
        await ensure_topics(broker.bootstrap, ["before.restart"], 1)
        broker.restart()
        assert broker.port == port
        admin_topics = await _list_topics(broker.bootstrap)
        assert "before.restart" not in admin_topics, "memory storage starts empty"
        await ensure_topics(broker.bootstrap, ["after.restart"], 1)
        async with KafkaPublisher(broker.bootstrap) as publisher:
            await publisher.publish("after.restart", [("k", _event(1))])
    finally:
        broker.stop()
    assert broker.pid is None


async def _list_topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
