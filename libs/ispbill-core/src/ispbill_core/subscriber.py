"""Runs a reactor or projection over the ledger: catch up from its checkpoint, then follow live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import CheckpointStore, EventStore

log = logging.getLogger(__name__)

Handler = Callable[[RecordedEvent], Awaitable[None]]


class LedgerSubscriber:
    """Feeds every event of `types` to `handler`, in global order, at least once.

    Handlers must be idempotent (deterministic event ids, or a record of what was done):
    the checkpoint is saved after the handler, so a crash in between redelivers one event.
    A failing handler is retried with backoff; the subscriber never skips an event.
    """

    def __init__(
        self,
        name: str,
        store: EventStore,
        checkpoints: CheckpointStore,
        handler: Handler,
        *,
        types: Collection[str] | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.name = name
        self._store = store
        self._checkpoints = checkpoints
        self._handler = handler
        self._types = types
        self._max_backoff = max_backoff
        self.position = 0
        self.handled = 0
        self.failures = 0
        self._caught_up = asyncio.Event()

    async def run(self) -> None:
        """Forever. A ledger that cannot be read (a database restarting, a failover) is tried
        again with backoff, like a failing handler: the subscriber never stops on its own, so a
        reactor cannot die silently while its process goes on."""
        loaded = False
        backoff = 0.1
        while True:
            try:
                if not loaded:
                    self.position = await self._checkpoints.load_checkpoint(self.name)
                    loaded = True
                await self._step()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception(
                    "subscriber %s could not read the ledger after position %d; retrying in %.1fs",
                    self.name,
                    self.position,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _step(self) -> None:
        # The head before the read: once a short read comes back, everything up to it has
        # been seen, whatever the type filter skipped. Waiting past our own last event
        # instead would return at once whenever other types were appended after it, and
        # the subscriber would spin (it did: one core at 100 % in an idle `ispbill run`).
        head = await self._store.head_position()
        batch = await self._store.read_all(after=self.position, limit=500, types=self._types)
        for event in batch:
            await self._handle(event)
            self.position = event.global_position
            await self._checkpoints.save_checkpoint(self.name, self.position)
        if len(batch) < 500:
            self._caught_up.set()
            await self._store.wait_for_append(max(self.position, head), 1.0)

    async def _handle(self, event: RecordedEvent) -> None:
        backoff = 0.1
        while True:
            try:
                await self._handler(event)
                self.handled += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception(
                    "subscriber %s failed on event %s (%s at %d); retrying in %.1fs",
                    self.name,
                    event.id,
                    event.type,
                    event.global_position,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def wait_caught_up(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._caught_up.wait(), timeout)
