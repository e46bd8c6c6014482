"""Embedded adapter of the bus: a topic is a family of ledger streams, so no broker is needed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ispbill_core.bus import BusError, BusUnavailable, Message, Publisher
from ispbill_core.events import EncodedEvent, encoded
from ispbill_core.eventstore import ANY, EventIdConflict, EventStore, EventStoreError


class LedgerPublisher(Publisher):
    """Appends each message's event to the stream `stream_for(topic, key)` chooses.

    Durable means committed to the ledger. Appends use expected version ANY: ordering per stream
    is the append order, and the deterministic event ids make a retried batch a no-op.
    """

    def __init__(self, store: EventStore, stream_for: Callable[[str, str], str]) -> None:
        self._store = store
        self._stream_for = stream_for

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        by_stream: dict[str, dict[str, EncodedEvent]] = {}
        for key, event in messages:
            serialised = encoded(event)
            # A retransmission can land in the same batch as its original: same id, once.
            by_stream.setdefault(self._stream_for(topic, key), {}).setdefault(
                serialised.id, serialised
            )
        try:
            # Every stream of the batch in one transaction where the store has them: one
            # commit per batch however many NASes it came from.
            await self._store.append_many(
                [(stream, list(events.values()), ANY) for stream, events in by_stream.items()]
            )
            return
        except EventIdConflict:
            pass  # part of it was recorded before, grouped otherwise: stream by stream below
        except EventStoreError as exc:
            failed = f"ledger append of {len(by_stream)} streams failed: {exc}"
            raise BusUnavailable(failed) from None
        for stream, events in by_stream.items():
            try:
                await self._append(stream, list(events.values()))
            except BusError:
                raise
            except EventStoreError as exc:
                # With expected version ANY the store's only other failures are the store
                # being unreachable or busy: retryable with the same ids.
                raise BusUnavailable(f"ledger append to {stream!r} failed: {exc}") from None

    async def _append(self, stream: str, events: list[EncodedEvent]) -> None:
        try:
            await self._store.append(stream, events, ANY)
        except EventIdConflict:
            # Part of the batch was recorded before (a retry of a partly published batch that
            # grouped differently): one event at a time, each already recorded one is a no-op.
            if len(events) == 1:
                raise BusError(
                    f"event {events[0].id} is recorded in another stream than {stream!r}"
                ) from None
            for event in events:
                await self._append(stream, [event])
