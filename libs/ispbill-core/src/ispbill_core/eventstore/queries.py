"""Reads over the global log that several services need (small reference data only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
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


async def scan_to_head(
    store: EventStore, types: Collection[str], *, head: int | None = None, page: int = 5000
) -> AsyncIterator[RecordedEvent]:
    """Every event of `types` in global order, up to `head` (default: the ledger's head when
    the scan starts; appends during a long scan do not extend it), `page` at a time: an
    auditor's replay or a report as of one moment of the log."""
    if head is None:
        head = await store.head_position()
    after = 0
    while after < head:
        batch = await store.read_all(after=after, limit=page, types=types)
        if not batch:
            return
        for recorded in batch:
            if recorded.global_position > head:
                return
            yield recorded
        after = batch[-1].global_position
