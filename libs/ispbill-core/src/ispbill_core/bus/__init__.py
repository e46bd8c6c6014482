"""The bus port: publish events to a topic and return only once they are durable."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType

from pydantic import ValidationError

from ispbill_core.events import AnyNewEvent, NewEvent, encoded

#: Kafka header that carries the W3C trace context of the event, so a consumer can continue
#: the trace without decoding the payload.
TRACEPARENT_HEADER = "traceparent"

#: One message of a batch: the partition key (keeps one key's messages in order) and the event.
Message = tuple[str, AnyNewEvent]


class BusError(Exception):
    """Base of the errors a bus adapter raises; driver errors are translated into these."""


class BusUnavailable(BusError):
    """Some messages of a batch may not be durable; retry the whole batch with the same ids."""


class UndecodableMessage(BusError):
    """A message on the bus that is not an ispbill event envelope."""


class Publisher(abc.ABC):
    """Where producers hand events to the bus.

    `publish` returns only when every message of the batch is durable (for Kafka: acknowledged
    by all in-sync replicas); that is the point at which a producer may acknowledge upstream,
    e.g. the usage collector answering the NAS. Otherwise it raises BusUnavailable, and the
    caller retries with the same event ids, which every consumer treats as a no-op.
    """

    async def start(self) -> None:  # noqa: B027 - adapters without resources need not override
        pass

    async def stop(self) -> None:  # noqa: B027 - adapters without resources need not override
        pass

    @abc.abstractmethod
    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Make every (key, event) of the batch durable on `topic`, in order per key."""

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def encode_message(event: AnyNewEvent) -> bytes:
    """The message value: the envelope as JSON (UTF-8)."""
    return encoded(event).envelope_json().encode()


def decode_message(value: bytes) -> NewEvent:
    """The envelope back from a message value; UndecodableMessage when it is not one."""
    try:
        return NewEvent.model_validate_json(value)
    except ValidationError as exc:
        raise UndecodableMessage(f"not an ispbill event envelope: {exc}") from None


def message_headers(event: AnyNewEvent) -> list[tuple[str, bytes]]:
    """Kafka headers of a message: the traceparent of its metadata, when it has one."""
    traceparent = encoded(event).traceparent
    if traceparent is None:
        return []
    return [(TRACEPARENT_HEADER, traceparent.encode("ascii"))]
