"""Wiring of rating: records rated with their sessions' silence deadlines, and rating's timers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ispbill_core.contracts.rating import UsageRated
from ispbill_core.events import NewEvent
from ispbill_core.eventstore import EventStore
from ispbill_core.timers import DueTimer, FireAgain, Timers
from ispbill_core.timers.runner import TimerHandler
from rating.application.rate_accounting_record import RatingSettings, rate_accounting_record
from rating.application.rate_batch import RatingCache, rate_accounting_batch
from rating.application.silent_sessions import (
    SILENT_SESSION_TIMER,
    Backlog,
    close_silent_sessions,
    watch_for_silence,
)
from rating.domain.silent_sessions import SilentSessionSettings


@dataclass
class Rating:
    """Rating over a ledger and, when given, the timers beside it: each batch (or record) moves
    its sessions' silence deadlines, then is rated; `timer_handlers` are what a runtime's
    TimerRunner fires for rating. `backlog` (the embedded runtime's) holds a deadline back
    while records received before it still wait to be rated."""

    store: EventStore
    settings: RatingSettings
    silent: SilentSessionSettings
    timers: Timers | None = None
    backlog: Backlog | None = None

    async def rate_batch(
        self,
        messages: Sequence[NewEvent],
        cache: RatingCache | None = None,
        *,
        checkpoint: tuple[str, int] | None = None,
    ) -> list[UsageRated]:
        """The batch's deadlines written, and the batch rated. With a `checkpoint` (the
        embedded subscriber's), the batch's progress commits with its append, so the deadlines
        go first: a crash between the two leaves deadlines whose records come again, never
        records that will not come again without deadlines. Without one, the caller
        acknowledges the batch after this returns (Kafka), and the two writes overlap."""
        if self.timers is None:
            return await rate_accounting_batch(
                self.store, self.settings, messages, cache, checkpoint=checkpoint
            )
        if checkpoint is not None:
            await watch_for_silence(self.timers, self.silent, messages)
            return await rate_accounting_batch(
                self.store, self.settings, messages, cache, checkpoint=checkpoint
            )
        watching = asyncio.create_task(watch_for_silence(self.timers, self.silent, messages))
        try:
            rated = await rate_accounting_batch(self.store, self.settings, messages, cache)
        except BaseException:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watching
            raise
        await watching
        return rated

    async def rate_record(self, message: NewEvent) -> UsageRated | None:
        if self.timers is not None:
            await watch_for_silence(self.timers, self.silent, [message])
        return await rate_accounting_record(self.store, self.settings, message)

    def timer_handlers(self) -> dict[str, TimerHandler]:
        """Rating's timer kinds and their handlers. With silence switched off, deadlines left
        from before are dropped when due, closing nothing."""

        async def silent_session(timer: DueTimer, now: datetime) -> datetime | FireAgain | None:
            if not self.silent.enabled:
                return None
            return await close_silent_sessions(
                self.store, self.silent, timer, now, backlog=self.backlog
            )

        return {SILENT_SESSION_TIMER: silent_session}
