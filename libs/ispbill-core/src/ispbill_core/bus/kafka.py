"""Kafka adapter of the bus: an idempotent aiokafka producer with acks=all, and topic setup.

Why there is a protocol shim here: aiokafka (0.14) only speaks InitProducerId v0, which has no
producer id or epoch fields. Tansu (the Kafka-protocol broker the tests and small deployments
use) rejects such a request with UNKNOWN_SERVER_ERROR, so an idempotent producer cannot start.
The Java client sends v3+ (KIP-360, Kafka 2.5+) with producer id and epoch -1; the shim teaches
aiokafka's sender the same v3 request. aiokafka still negotiates the version per broker, so a
broker without v3 keeps getting v0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.producer import sender as _aiokafka_sender
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

from ispbill_core.bus import BusError, BusUnavailable, Message, Publisher, encode_message
from ispbill_core.bus import message_headers as _headers

__all__ = ["KafkaPublisher", "ensure_topics"]

_TOPIC_ALREADY_EXISTS = 36


class _InitProducerIdResponseV3(Response):  # type: ignore[misc] # aiokafka is untyped
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _InitProducerIdRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = _InitProducerIdResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _InitProducerIdRequest(Request[InitProducerIdRequest_v0 | _InitProducerIdRequestV3]):  # type: ignore[misc]
    """Drop-in for aiokafka's InitProducerIdRequest that can also build v3."""

    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(
        self, request_struct_class: type[InitProducerIdRequest_v0 | _InitProducerIdRequestV3]
    ) -> InitProducerIdRequest_v0 | _InitProducerIdRequestV3:
        if request_struct_class.API_VERSION == 0:
            return request_struct_class(self._transactional_id, self._transaction_timeout_ms)
        # -1/-1: a new producer id, not the bump of an existing producer's epoch.
        return request_struct_class(
            self._transactional_id, self._transaction_timeout_ms, -1, -1, {}
        )


def _install_init_producer_id_v3() -> None:
    module: Any = _aiokafka_sender
    module.InitProducerIdRequest = _InitProducerIdRequest


class KafkaPublisher(Publisher):
    """Publishes to Kafka with acks=all and the idempotent producer.

    A batch is handed to the producer in order (so one key's messages stay in order on its
    partition) and then awaited as a whole; `publish` returns when the broker has acknowledged
    every message, or raises BusUnavailable after `delivery_timeout` seconds or on a send error.
    Messages still in flight after a timeout may yet be written: the retry by the caller carries
    the same event ids, and consumers treat a repeated id as a no-op.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        client_id: str = "ispbill",
        linger_ms: int = 5,
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
        self._delivery_timeout = delivery_timeout
        self._request_timeout_ms = request_timeout_ms
        self._enable_idempotence = enable_idempotence
        self._compression_type = compression_type
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        if self._enable_idempotence:
            _install_init_producer_id_v3()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=self._enable_idempotence,
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
            compression_type=self._compression_type,
        )
        try:
            await asyncio.wait_for(producer.start(), self._delivery_timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            raise BusUnavailable(f"cannot start the Kafka producer: {exc!r}") from None
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
            for key, event in messages:
                # send() only waits for metadata and buffer space; it returns the delivery
                # future, so the batch goes out together and is awaited below.
                send = producer.send(
                    topic,
                    encode_message(event),
                    key=key.encode(),
                    headers=_headers(event),
                )
                deliveries.append(await asyncio.wait_for(send, deadline - loop.time()))
        except (KafkaError, TimeoutError) as exc:
            raise BusUnavailable(f"cannot send to {topic!r}: {exc!r}") from None
        # asyncio.wait, not gather: a timeout must not cancel aiokafka's own futures.
        done, pending = await asyncio.wait(deliveries, timeout=max(0.0, deadline - loop.time()))
        if pending:
            raise BusUnavailable(
                f"{len(pending)} of {len(deliveries)} messages to {topic!r} not acknowledged "
                f"within {self._delivery_timeout}s"
            )
        for delivery in done:
            error = delivery.exception()
            if error is not None:
                raise BusUnavailable(f"delivery to {topic!r} failed: {error!r}") from None


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
