"""Ports the collector's use cases call: the bus publisher and the attribute decoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ispbill_core.events import AnyNewEvent
from usage_collector.domain.accounting_record import AccountingAttributes
from usage_collector.domain.radius_packet import RadiusPacket


class AccountingPublisher(Protocol):
    """The part of ispbill_core.bus.Publisher the collector uses (structural, so any bus fits).

    `publish` returns once every message is durable, and raises when it is not.
    """

    async def publish(self, topic: str, messages: Sequence[tuple[str, AnyNewEvent]]) -> None: ...


class AttributeDecoder(Protocol):
    """Types a packet's raw attributes by a RADIUS dictionary: name -> decoded values."""

    def __call__(self, packet: RadiusPacket) -> AccountingAttributes: ...

    def value_names(self, attribute_type: int) -> Mapping[bytes, str]:
        """The named values of a standard attribute: raw value -> name (empty when none)."""
        ...
