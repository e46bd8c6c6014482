"""Reads over the global log that several services need (small reference data only)."""

from __future__ import annotations

from typing import TypeVar

from ispbill_core.events import DomainEvent, RecordedEvent
from ispbill_core.eventstore import EventStore

T = TypeVar("T", bound=DomainEvent)


async def recorded_of_types(store: EventStore, *types: str) -> list[RecordedEvent]:
    """Every recorded event of the given types, in global order."""
    found: list[RecordedEvent] = []
    after = 0
    while True:
        batch = await store.read_all(after=after, limit=1000, types=set(types))
        found.extend(batch)
        if len(batch) < 1000:
            return found
        after = batch[-1].global_position


async def all_events_of(store: EventStore, kind: type[T]) -> list[T]:
    """Every event of one kind, decoded, in the order recorded."""
    decoded: list[T] = []
    for recorded in await recorded_of_types(store, kind.event_type):
        event = recorded.decode()
        assert isinstance(event, kind)
        decoded.append(event)
    return decoded
