"""KafkaPublisher against a real Kafka-protocol broker (Tansu), read back with aiokafka."""

from __future__ import annotations

import asyncio
import gc
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ispbill_core.bus import (
    TRACEPARENT_HEADER,
    BusError,
    BusUnavailable,
    decode_message,
    encode_message,
)
from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
from ispbill_core.events import EventMetadata, NewEvent
from tests.fixtures.kafka import TansuBroker

pytestmark = pytest.mark.integration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _event(n: int, *, traceparent: str | None = TRACEPARENT) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="Tested",
        version=1,
        data={"n": n},
        metadata=EventMetadata(
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC), traceparent=traceparent
        ),
    )


async def _consume_all(
    bootstrap: str, topic: str, count: int
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
        for _ in range(50):
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
