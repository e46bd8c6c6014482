"""Runs a reactor or projection over the ledger: catch up from its checkpoint, then follow live."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING

from ispbill_core.bus import BusUnavailable
from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import (
    CheckpointStore,
    EventIdConflict,
    EventStore,
    EventStoreError,
    WrongExpectedVersion,
)

if TYPE_CHECKING:
    from ispbill_core.projections import ReadModelDatabase

log = logging.getLogger(__name__)

Handler = Callable[[RecordedEvent], Awaitable[None]]
#: Gets a batch and the checkpoint (name, position) that handling it reaches; returns True
#: when it moved that checkpoint itself, in the transaction of its own writes.
BatchHandler = Callable[[Sequence[RecordedEvent], tuple[str, int]], Awaitable[bool]]

#: How often a subscriber looks for parked events someone asked to retry.
_RETRY_POLL_SECONDS = 2.0


class TransientError(Exception):
    """Raise from a handler when the event is fine but something it needs is not there yet (a
    read model still catching up, a gateway answering 503): the event is retried, not parked."""


def is_transient(exc: BaseException) -> bool:
    """Whether a handler's failure is worth retrying as it is (the database or broker down, a
    concurrent writer won) rather than parking the event (bad data, a bug).

    An SMTP server's 5xx answer is permanent for that message; its 4xx answers and lost
    connections are transient.
    """
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return False
    if isinstance(exc, EventIdConflict):
        return False
    return isinstance(
        exc,
        TransientError
        | WrongExpectedVersion
        | EventStoreError
        | BusUnavailable
        | OSError
        | TimeoutError,
    )


class LedgerSubscriber:
    """Feeds every event of `types` to `handler`, in global order, at least once.

    Handlers must be idempotent (deterministic event ids, or a record of what was done):
    the checkpoint is saved after the handler, so a crash in between redelivers one event.
    A transient failure (`is_transient`) is retried with backoff. Any other failure parks the
    event in `parking` with its reason (an alert: logged at ERROR, counted) and the subscriber
    goes on; parked events marked for retry (`ispbill parked retry`) are handled again. Without
    `parking` every failure is retried, as before parking existed.

    With a `batch_handler`, each read batch (up to `batch_size` events) goes to it at once with
    the checkpoint it reaches, which the handler may move in its own transaction (rating: the
    batch's effects and its checkpoint commit together); otherwise it is saved after. A batch
    that fails for good is handed to `handler` event by event, so that only the event at
    fault is parked.
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
        parking: ReadModelDatabase | None = None,
        batch_handler: BatchHandler | None = None,
        batch_size: int = 500,
    ) -> None:
        self.name = name
        self._batch_handler = batch_handler
        self._batch_size = batch_size
        self._store = store
        self._checkpoints = checkpoints
        self._handler = handler
        self._types = types
        self._max_backoff = max_backoff
        self.position = 0
        self.handled = 0
        self.failures = 0
        self.parked = 0
        self._parking = parking
        self._retries_checked_at = 0.0
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
        batch = await self._store.read_all(
            after=self.position, limit=self._batch_size, types=self._types
        )
        if batch and self._batch_handler is not None:
            reached = batch[-1].global_position
            outcome = await self._handle_batch(batch, reached)
            if outcome is None:
                for event in batch:
                    await self._handle(event)
            if not outcome:
                await self._checkpoints.save_checkpoint(self.name, reached)
            self.position = reached
        else:
            for event in batch:
                await self._handle(event)
                self.position = event.global_position
                await self._checkpoints.save_checkpoint(self.name, self.position)
        if len(batch) < self._batch_size:
            self._caught_up.set()
            await self._retry_requested()
            await self._store.wait_for_append(max(self.position, head), 1.0)

    async def _retry_requested(self) -> None:
        """Handle again the parked events someone marked for retry; park again what fails."""
        if self._parking is None:
            return
        now = time.monotonic()
        if now - self._retries_checked_at < _RETRY_POLL_SECONDS:
            return
        self._retries_checked_at = now
        self.handled += await retry_parked(self._parking, self.name, self._handler)

    async def _park(self, event: RecordedEvent, exc: BaseException) -> None:
        from ispbill_core.projections import failure_reason

        assert self._parking is not None
        reason = failure_reason(exc)
        await self._parking.park(self.name, event, reason)
        self.parked += 1
        # an alert: operators watch for this line, and the parked count on /healthz
        log.error(
            "PARKED event %s (%s at %d) for %s: %s",
            event.id,
            event.type,
            event.global_position,
            self.name,
            reason,
        )

    async def _handle_batch(self, batch: Sequence[RecordedEvent], reached: int) -> bool | None:
        """The batch handler, retried while its failure is transient: whether it moved the
        checkpoint itself, or None when it failed for good (the batch is then handled event
        by event)."""
        assert self._batch_handler is not None
        backoff = 0.1
        while True:
            try:
                saved = await self._batch_handler(batch, (self.name, reached))
                self.handled += len(batch)
                return bool(saved)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._parking is not None and not is_transient(exc):
                    log.warning(
                        "subscriber %s: a batch of %d failed (%s); handling it event by event",
                        self.name,
                        len(batch),
                        exc,
                    )
                    return None
                self.failures += 1
                log.exception(
                    "subscriber %s failed on a batch of %d after position %d; retrying in %.1fs",
                    self.name,
                    len(batch),
                    self.position,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _handle(self, event: RecordedEvent) -> None:
        backoff = 0.1
        while True:
            try:
                await self._handler(event)
                self.handled += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._parking is not None and not is_transient(exc):
                    await self._park(event, exc)
                    return
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


async def retry_parked(parking: ReadModelDatabase, consumer: str, handler: Handler) -> int:
    """Hand `consumer`'s parked events that were marked for retry to `handler` again: resolved
    when it succeeds, parked again with the new reason when it fails. Returns how many were
    handled."""
    from ispbill_core.projections import ParkedStatus, failure_reason

    handled = 0
    for entry in await parking.parked(consumer=consumer, status=ParkedStatus.RETRY):
        event = entry.event()
        try:
            await handler(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await parking.park(consumer, event, failure_reason(exc))
            log.error("parked event %s failed again for %s: %s", entry.id, consumer, exc)
            continue
        handled += 1
        await parking.set_parked_status(entry.id, ParkedStatus.RESOLVED)
        log.info("%s: parked event %s retried and handled", consumer, entry.id)
    return handled


async def retry_parked_forever(
    parking: ReadModelDatabase, consumer: str, handler: Handler, every: float = _RETRY_POLL_SECONDS
) -> None:
    """For consumers that are not ledger subscribers (the Kafka rating worker)."""
    while True:
        try:
            await retry_parked(parking, consumer, handler)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: retrying parked events failed; trying again", consumer)
        await asyncio.sleep(every)
