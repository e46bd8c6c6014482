"""Dead-letter topics: where a Kafka consumer puts a record it can never handle, and how an
operator lists and replays them.

A record that fails for good (it does not decode, or its handler raises an error that is not
transient) is copied to `<source topic>.dead-letter` with its key, value and headers as they
were, plus headers saying why and where it came from (`HEADER_*` below); then the consumer
commits past it and goes on (ADR 0026). The copy is durable (acks=all, idempotent producer)
before the source offset is committed, so a record is never only in neither place.

Replaying publishes the original key, value and headers back to the source topic, with
`ispbill.replayed-from` naming the dead letter; the consumer handles it as any other record
(consumers are idempotent, so replaying a record that was handled meanwhile changes nothing),
and dead-letters it again, with the new reason, if it still fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ispbill_core.bus import BusError, BusUnavailable
from ispbill_core.bus.kafka_compat import install_kafka_compat

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "HEADER_AT",
    "HEADER_CONSUMER",
    "HEADER_ERROR",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_REASON",
    "HEADER_REPLAYED_FROM",
    "HEADER_TOPIC",
    "DeadLetter",
    "KafkaDeadLetters",
    "dead_letter_topic",
    "read_dead_letters",
    "replay_dead_letters",
]

#: `<source topic>.dead-letter`: one dead-letter topic per source topic; the consumer group that
#: put a record there is in its `ispbill.dead-letter.consumer` header.
DEAD_LETTER_SUFFIX = ".dead-letter"

_PREFIX = "ispbill.dead-letter."
#: Why: the error and where it was raised (as a parked event's reason), at most 2,000 chars.
HEADER_REASON = _PREFIX + "reason"
#: The error's type, module-qualified: `pydantic_core._pydantic_core.ValidationError`.
HEADER_ERROR = _PREFIX + "error"
#: Where the record was read: source topic, partition and offset (decimal).
HEADER_TOPIC = _PREFIX + "topic"
HEADER_PARTITION = _PREFIX + "partition"
HEADER_OFFSET = _PREFIX + "offset"
#: When it was dead-lettered, ISO 8601 in UTC.
HEADER_AT = _PREFIX + "at"
#: The consumer (group id) that gave up on it.
HEADER_CONSUMER = _PREFIX + "consumer"
#: On a replayed record: `<dead-letter topic>/<partition>/<offset>` it was replayed from.
HEADER_REPLAYED_FROM = "ispbill.replayed-from"

_MAX_REASON = 2000


def dead_letter_topic(source: str) -> str:
    return source + DEAD_LETTER_SUFFIX


@dataclass(frozen=True)
class DeadLetter:
    """A record a consumer gave up on: the record as it was read, and why.

    `headers` are the record's own headers; `dead_letter_partition` and `dead_letter_offset`
    say where the dead letter itself is, once read back from its topic (else -1).
    """

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    reason: str
    error: str
    topic: str
    partition: int
    offset: int
    consumer: str
    at: datetime
    dead_letter_partition: int = -1
    dead_letter_offset: int = -1

    @classmethod
    def of(
        cls,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]],
        error: BaseException,
        reason: str,
        topic: str,
        partition: int,
        offset: int,
        consumer: str,
        at: datetime,
    ) -> DeadLetter:
        kind = type(error)
        return cls(
            key=key,
            value=value,
            headers=tuple(headers),
            reason=reason[:_MAX_REASON],
            error=f"{kind.__module__}.{kind.__qualname__}",
            topic=topic,
            partition=partition,
            offset=offset,
            consumer=consumer,
            at=at.astimezone(UTC),
        )

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The record's own headers, then the dead-letter ones."""
        ours = [
            (HEADER_REASON, self.reason),
            (HEADER_ERROR, self.error),
            (HEADER_TOPIC, self.topic),
            (HEADER_PARTITION, str(self.partition)),
            (HEADER_OFFSET, str(self.offset)),
            (HEADER_AT, self.at.isoformat()),
            (HEADER_CONSUMER, self.consumer),
        ]
        return [*self.headers, *((name, text.encode()) for name, text in ours)]

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """A dead letter read back from its topic (an aiokafka ConsumerRecord)."""
        own: list[tuple[str, bytes]] = []
        ours: dict[str, str] = {}
        for name, value in record.headers or ():
            if name.startswith(_PREFIX):
                ours[name] = bytes(value).decode(errors="replace")
            else:
                own.append((name, bytes(value)))
        at = ours.get(HEADER_AT)
        return cls(
            key=record.key,
            value=record.value,
            headers=tuple(own),
            reason=ours.get(HEADER_REASON, ""),
            error=ours.get(HEADER_ERROR, ""),
            topic=ours.get(HEADER_TOPIC, ""),
            partition=int(ours.get(HEADER_PARTITION, "-1")),
            offset=int(ours.get(HEADER_OFFSET, "-1")),
            consumer=ours.get(HEADER_CONSUMER, ""),
            at=datetime.fromisoformat(at) if at else datetime.fromtimestamp(0, UTC),
            dead_letter_partition=record.partition,
            dead_letter_offset=record.offset,
        )

    @property
    def replayed_from(self) -> str | None:
        """For a record that failed again after a replay: the dead letter it was replayed from."""
        for name, value in self.headers:
            if name == HEADER_REPLAYED_FROM:
                return value.decode(errors="replace")
        return None


class KafkaDeadLetters:
    """Publishes dead letters to `<source>.dead-letter`, durably (acks=all, idempotent).

    `publish` returns once every letter is acknowledged, or raises BusUnavailable; a failed
    producer is dropped and the next call starts a new one (a broker that lost its state answers
    an idempotent producer with UnknownProducerId for good).
    """

    def __init__(
        self, bootstrap_servers: str | Sequence[str], *, client_id: str, timeout: float = 30.0
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self.published = 0

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            install_kafka_compat()
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=int(self._timeout * 1000),
            )
            try:
                await asyncio.wait_for(producer.start(), self._timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        try:
            producer = await self._started()
            async with asyncio.timeout(self._timeout):
                deliveries = [
                    await producer.send(
                        dead_letter_topic(letter.topic),
                        key=letter.key,
                        value=letter.value,
                        headers=letter.kafka_headers(),
                    )
                    for letter in letters
                ]
                await asyncio.gather(*deliveries)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.stop()
            raise BusUnavailable(f"cannot publish dead letters: {exc!r}") from None
        self.published += len(letters)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


async def read_dead_letters(
    bootstrap_servers: str | Sequence[str], topic: str, *, timeout: float = 10.0
) -> list[DeadLetter]:
    """Every dead letter on `topic` (a dead-letter topic), oldest first per partition. Reads
    without a consumer group: listing commits nothing and changes nothing."""
    install_kafka_compat()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            if topic not in await consumer.topics():  # fetches the metadata of every topic
                raise BusError(f"no topic {topic!r} on the broker")
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise BusError(f"no topic {topic!r} on the broker")
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            letters: list[DeadLetter] = []
            # Until the end offsets AND a quiet poll: Tansu answers the end offset of a batch
            # of several records as its first record's offset + 1.
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=300)
                for records in batches.values():
                    letters.extend(DeadLetter.from_record(record) for record in records)
                if not batches and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    break
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot read {topic!r}: {exc!r}") from None
    finally:
        await consumer.stop()
    return letters


async def replay_dead_letters(
    bootstrap_servers: str | Sequence[str],
    letters: Sequence[DeadLetter],
    *,
    dead_letter_topic_name: str,
    timeout: float = 30.0,
) -> int:
    """Publish each letter's record to its source topic again, as it was, with
    `ispbill.replayed-from` added; returns how many were published."""
    install_kafka_compat()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        async with asyncio.timeout(timeout):
            await producer.start()
            deliveries = []
            for letter in letters:
                origin = (
                    f"{dead_letter_topic_name}/{letter.dead_letter_partition}"
                    f"/{letter.dead_letter_offset}"
                )
                headers = [(n, v) for n, v in letter.headers if n != HEADER_REPLAYED_FROM]
                deliveries.append(
                    await producer.send(
                        letter.topic,
                        key=letter.key,
                        value=letter.value,
                        headers=[*headers, (HEADER_REPLAYED_FROM, origin.encode())],
                    )
                )
            await asyncio.gather(*deliveries)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot replay dead letters: {exc!r}") from None
    finally:
        await producer.stop()
    return len(letters)
