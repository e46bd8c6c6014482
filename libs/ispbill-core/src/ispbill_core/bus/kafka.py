"""Kafka adapter of the bus: an idempotent aiokafka producer with acks=all, and topic setup."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from ispbill_core.bus import BusError, BusUnavailable, Message, Publisher
from ispbill_core.bus import message_headers as _headers
from ispbill_core.bus.kafka_compat import install_kafka_compat
from ispbill_core.events import encoded

__all__ = ["KafkaPublisher", "ensure_topics", "partition_for"]

_TOPIC_ALREADY_EXISTS = 36


class KafkaPublisher(Publisher):
    """Publishes to Kafka with acks=all and the idempotent producer.

    A batch becomes one record batch per partition (up to `max_batch_bytes` each; the key's
    partition as Kafka's default partitioner picks it), in order, so one key's messages stay in
    order on its partition; they are sent at once (no linger: a publish is a whole batch
    already) and awaited together. `publish` returns when the broker has acknowledged every
    message, or raises BusUnavailable after `delivery_timeout` seconds or on a send error.
    Messages still in flight after a timeout may yet be written: the retry by the caller carries
    the same event ids, and consumers treat a repeated id as a no-op.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        client_id: str = "ispbill",
        linger_ms: int = 0,
        max_batch_bytes: int = 512 * 1024,
        delivery_timeout: float = 30.0,
        request_timeout_ms: int = 30_000,
        enable_idempotence: bool = True,
        compression_type: str | None = None,
    ) -> None:
        self._bootstrap = (
            bootstrap_servers if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
        )
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._max_batch_bytes = max_batch_bytes
        self._delivery_timeout = delivery_timeout
        self._request_timeout_ms = request_timeout_ms
        self._enable_idempotence = enable_idempotence
        self._compression_type = compression_type
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        install_kafka_compat()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=self._enable_idempotence,
            linger_ms=self._linger_ms,
            max_batch_size=self._max_batch_bytes,
            request_timeout_ms=self._request_timeout_ms,
            compression_type=self._compression_type,
        )
        try:
            await asyncio.wait_for(producer.start(), self._delivery_timeout)
        except BaseException as exc:
            # Cancelled too (a caller's own timeout): a half-started producer keeps a
            # connection and a sender task alive unless it is stopped here.
            with contextlib.suppress(Exception):
                await producer.stop()
            if isinstance(exc, KafkaError | OSError | TimeoutError):
                raise BusUnavailable(f"cannot start the Kafka producer: {exc!r}") from None
            raise
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        producer = self._producer
        if producer is None:
            raise BusError("KafkaPublisher.publish before start()")
        if not messages:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._delivery_timeout
        deliveries: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout_at(deadline):
                count = len(await producer.partitions_for(topic))
                # The batch as one record batch per partition, built here: producer.send()
                # per message cost ~20 us each (a coroutine, a future, Python murmur2). In
                # order within each partition, so one key's messages stay in order.
                by_partition: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}
                for key, event in messages:
                    serialised = encoded(event)
                    key_bytes = key.encode()
                    by_partition.setdefault(partition_for(key_bytes, count), []).append(
                        (key_bytes, serialised.envelope_json().encode(), _headers(serialised))
                    )
                for partition, records in by_partition.items():
                    batch = producer.create_batch()
                    for key_bytes, value, headers in records:
                        if batch.append(
                            timestamp=None, key=key_bytes, value=value, headers=headers
                        ):
                            continue
                        # Full: send it (in order) and start the next one with this message.
                        deliveries.append(await self._send_batch(batch, topic, partition))
                        batch = producer.create_batch()
                        if not batch.append(
                            timestamp=None, key=key_bytes, value=value, headers=headers
                        ):
                            raise BusError(f"a message of {len(value)} bytes fits no batch")
                    deliveries.append(await self._send_batch(batch, topic, partition))
        except (KafkaError, TimeoutError) as exc:
            raise BusUnavailable(f"cannot send to {topic!r}: {exc!r}") from None
        # asyncio.wait, not gather: a timeout must not cancel aiokafka's own futures.
        done, pending = await asyncio.wait(deliveries, timeout=max(0.0, deadline - loop.time()))
        if pending:
            raise BusUnavailable(
                f"{len(pending)} of {len(deliveries)} record batches to {topic!r} not"
                f" acknowledged within {self._delivery_timeout}s"
            )
        for delivery in done:
            error = delivery.exception()
            if error is not None:
                raise BusUnavailable(f"delivery to {topic!r} failed: {error!r}") from None

    async def _send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        assert self._producer is not None
        delivery: asyncio.Future[Any] = await self._producer.send_batch(
            batch, topic, partition=partition
        )
        # Once a later call has failed, nobody awaits this delivery; retrieve its error so
        # asyncio does not log "never retrieved".
        delivery.add_done_callback(_retrieve_exception)
        return delivery


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a key, as Kafka's default partitioner (and Java's) chooses it:
    murmur2 of the key, made positive, modulo the partition count."""
    return (_murmur2(key) & 0x7FFFFFFF) % partitions


@functools.lru_cache(maxsize=65_536)
def _murmur2(key: bytes) -> int:
    """aiokafka's murmur2 is pure Python (~5 us); one session's records share their key."""
    hashed: int = murmur2(key)
    return hashed


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def ensure_topics(
    bootstrap_servers: str | Sequence[str],
    topics: Iterable[str],
    partitions: int = 3,
    *,
    replication_factor: int = 1,
    request_timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Brokers may have topic auto-creation off (Tansu does), so every producer and consumer of
    the distributed runtime calls this for its topics at start.
    """
    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(request_timeout * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), request_timeout)
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        response = await admin.create_topics(
            [NewTopic(t, partitions, replication_factor) for t in missing],
            timeout_ms=int(request_timeout * 1000),
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot create topics {wanted}: {exc!r}") from None
    finally:
        await admin.close()
    failures = [
        f"{name}: {message or code}"
        for name, code, *rest in response.topic_errors
        for message in [rest[0] if rest else None]
        if code not in (0, _TOPIC_ALREADY_EXISTS)
    ]
    if failures:
        raise BusError(f"cannot create topics: {'; '.join(failures)}")
