"""A NAS registry folded from NasRegistered events in the ledger, following new ones live."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ispbill_core.contracts.accounts import NasRegistered
from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import EventStore
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.application.nas_registry import NasRegistry, RegisteredNas

log = logging.getLogger(__name__)

NAS_EVENT_TYPES = frozenset({NasRegistered.event_type})


class LedgerNasRegistry(NasRegistry):
    """`start()` reads every NasRegistered so far, then a task follows the log for new ones.

    Lookups answer from memory, so the receive path never waits on the store.
    """

    def __init__(self, store: EventStore, *, page_size: int = 1000) -> None:
        self._store = store
        self._page_size = page_size
        self._index = InMemoryNasRegistry()
        self._position = 0
        self._follower: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def position(self) -> int:
        """Global position of the last event folded in."""
        return self._position

    async def start(self) -> None:
        while True:
            batch = await self._store.read_all(
                after=self._position, limit=self._page_size, types=NAS_EVENT_TYPES
            )
            for event in batch:
                self._apply(event)
            if len(batch) < self._page_size:
                break
        self._follower = asyncio.create_task(self._follow(), name="nas-registry-follower")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    def lookup(self, source_ip: str) -> RegisteredNas | None:
        return self._index.lookup(source_ip)

    async def wait_for_position(self, position: int) -> None:
        """Return once events up to `position` are folded in; callers bound it with a timeout."""
        while self._position < position:
            self._changed.clear()
            await self._changed.wait()

    async def _follow(self) -> None:
        while True:
            try:
                async for event in self._store.subscribe(
                    after=self._position, types=NAS_EVENT_TYPES
                ):
                    self._apply(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Keep serving the NASes already known; try the store again shortly.
                log.exception("following NasRegistered events failed; retrying")
                await asyncio.sleep(1.0)

    def _apply(self, event: RecordedEvent) -> None:
        try:
            registered = event.decode()
            assert isinstance(registered, NasRegistered)
            self._index.register(RegisteredNas.from_event(registered))
        except Exception:
            log.exception("skipping NasRegistered event %s that does not decode", event.id)
        self._position = max(self._position, event.global_position)
        self._changed.set()
