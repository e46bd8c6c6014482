"""Fires due timers: claims them, hands each to the handler of its kind, completes or parks it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ispbill_core.clock import Clock
from ispbill_core.events import EventMetadata, RecordedEvent, deterministic_id, timestamp_json
from ispbill_core.subscriber import is_transient, retry_parked
from ispbill_core.timers import DEFAULT_LEASE, DueTimer, FireAgain, Timer, Timers

if TYPE_CHECKING:
    from ispbill_core.projections import ReadModelDatabase

log = logging.getLogger(__name__)

#: Fires one timer at `now` (the runner's clock): returns None when it is done with it (the
#: timer is removed), or when to fire it again (a time; or FireAgain, to change its payload
#: too). Raising a transient error (`is_transient`) fires it again after a backoff; any other
#: error parks it.
TimerHandler = Callable[[DueTimer, datetime], Awaitable[datetime | FireAgain | None]]

#: What a parked timer is kept as in parked_events: an envelope that is not in the ledger.
PARKED_TIMER_TYPE = "TimerDue"
_ACTOR = "system:timers"

#: How often the runner looks for parked timers someone asked to retry.
_RETRY_POLL_SECONDS = 2.0


def parked_consumer(kind: str) -> str:
    """The consumer name a timer of `kind` is parked under (`ispbill parked list`)."""
    return f"timer:{kind}"


def as_parked_record(timer: Timer) -> RecordedEvent:
    """A timer in the form parked events keep (no ledger positions, 0). Its id is the
    deadline's (timer id and due time): the same deadline parked again counts an attempt."""
    return RecordedEvent(
        id=deterministic_id("timer", timer.timer_id, timestamp_json(timer.due_at)),
        type=PARKED_TIMER_TYPE,
        version=1,
        data={
            "timer_id": timer.timer_id,
            "kind": timer.kind,
            "due_at": timestamp_json(timer.due_at),
            "payload": dict(timer.payload),
        },
        metadata=EventMetadata(occurred_at=timer.due_at, actor=_ACTOR),
        stream=f"timer-{timer.timer_id}",
        stream_position=0,
        global_position=0,
    )


def timer_from_parked(event: RecordedEvent) -> DueTimer:
    """The timer a parked record keeps, with no claim (it is not in the timers table)."""
    data: dict[str, Any] = event.data
    return DueTimer(
        data["timer_id"],
        data["kind"],
        datetime.fromisoformat(data["due_at"]),
        data.get("payload") or {},
        attempts=0,
    )


class TimerRunner:
    """Forever: every `poll_interval` seconds, claim the due timers of the handled kinds (up
    to `batch_size` at a time, leased for `lease`) and fire them one by one.

    A handler that returns None completes its timer; one that returns a time (or FireAgain)
    postpones it there. A transient failure (the ledger down, a concurrent writer) postpones it by a
    backoff that doubles with its attempts, up to `max_backoff`. Any other failure parks it in
    `parking` (consumer `timer:<kind>`, an ERROR log line `PARKED timer`) and removes it; a
    parked timer marked for retry (`ispbill parked retry`) is fired again, and scheduled again
    if its handler asks for a later time. Without `parking` every failure backs off. A runner
    that cannot claim (the database unavailable) tries again with backoff: it never stops.
    """

    def __init__(
        self,
        timers: Timers,
        handlers: Mapping[str, TimerHandler],
        clock: Clock,
        *,
        parking: ReadModelDatabase | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 100,
        lease: timedelta = DEFAULT_LEASE,
        max_backoff: float = 300.0,
    ) -> None:
        self.timers = timers
        self.handlers = dict(handlers)
        self.clock = clock
        self.parking = parking
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.lease = lease
        self.max_backoff = max_backoff
        self.fired = 0
        self.postponed = 0
        self.failures = 0
        self.parked = 0
        self._retries_checked_at = 0.0

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                claimed = await self.run_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("timer runner could not claim timers; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if claimed < self.batch_size:
                await self._retry_requested()
                await asyncio.sleep(self.poll_interval)

    async def run_once(self) -> int:
        """Claim what is due now and fire it; returns how many timers were claimed."""
        if not self.handlers:
            return 0
        due = await self.timers.claim_due(
            self.clock.now(), limit=self.batch_size, kinds=self.handlers, lease=self.lease
        )
        for timer in due:
            await self.fire(timer)
        return len(due)

    async def fire(self, timer: DueTimer) -> None:
        handler = self.handlers[timer.kind]
        try:
            again = await handler(timer, self.clock.now())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(timer, exc)
            return
        self.fired += 1
        if again is None:
            await self.timers.complete(timer)
        elif isinstance(again, FireAgain):
            self.postponed += 1
            await self.timers.postpone(timer, again.at, payload=again.payload)
        else:
            self.postponed += 1
            await self.timers.postpone(timer, again)

    async def _failed(self, timer: DueTimer, exc: Exception) -> None:
        if self.parking is not None and not is_transient(exc):
            from ispbill_core.projections import failure_reason

            reason = failure_reason(exc)
            await self.parking.park(parked_consumer(timer.kind), as_parked_record(timer), reason)
            await self.timers.complete(timer)
            self.parked += 1
            # an alert, as for parked events: operators watch for this line
            log.error(
                "PARKED timer %s (%s) due %s: %s", timer.timer_id, timer.kind, timer.due_at, reason
            )
            return
        self.failures += 1
        delay = min(2.0 ** min(timer.attempts, 30), self.max_backoff)
        log.warning(
            "timer %s (%s) failed (%s); firing it again in %.0fs",
            timer.timer_id,
            timer.kind,
            exc,
            delay,
        )
        await self.timers.postpone(timer, self.clock.now() + timedelta(seconds=delay))

    async def _retry_requested(self) -> None:
        """Fire again the parked timers someone marked for retry; park again what fails."""
        if self.parking is None:
            return
        now = time.monotonic()
        if now - self._retries_checked_at < _RETRY_POLL_SECONDS:
            return
        self._retries_checked_at = now
        for kind in self.handlers:
            self.fired += await retry_parked(self.parking, parked_consumer(kind), self._refire)

    async def _refire(self, event: RecordedEvent) -> None:
        timer = timer_from_parked(event)
        again = await self.handlers[timer.kind](timer, self.clock.now())
        # scheduled again unless a newer deadline of the same id was scheduled meanwhile
        if again is None or await self.timers.get(timer.timer_id) is not None:
            return
        if isinstance(again, FireAgain):
            payload = timer.payload if again.payload is None else again.payload
            await self.timers.schedule(timer.timer_id, again.at, timer.kind, payload)
        else:
            await self.timers.schedule(timer.timer_id, again, timer.kind, timer.payload)
