"""Keeps projections up to date: catch up from each checkpoint, then follow the ledger live.

Each batch of events is folded and committed with the checkpoint in one transaction. An event
whose folding raises (bad data, a bug) is parked with its reason and the projection goes on; a
database that is unavailable is retried with backoff and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import EventStore, StoreUnavailable
from ispbill_core.projections import (
    Commit,
    ParkedEvent,
    ParkedStatus,
    Projection,
    ProjectionState,
    ReadModelDatabase,
    StaleCheckpoint,
    failure_reason,
)

log = logging.getLogger(__name__)

#: How often an idle projection saves a checkpoint moved past other types' events (a restart
#: then does not re-read them); moving it in memory costs nothing and happens at once.
_IDLE_SAVE_SECONDS = 5.0
#: How often an idle projection looks for parked events marked for retry.
_RETRY_POLL_SECONDS = 2.0
#: The least time between two polls of a projection that was caught up: under a stream of
#: appends of other types (60,000 accounting records a second), every append would wake every
#: projection for an empty read; this bounds that to 40 polls a second each, and what a
#: read-your-writes read waits at most for it.
MIN_POLL_SECONDS = 0.025


@dataclass
class ProjectionRunner:
    """One projection's loop. `seen` is how far the ledger has been looked at for it (in
    memory, ahead of the saved checkpoint while idle): what read-your-writes waits on."""

    projection: Projection
    store: EventStore
    db: ReadModelDatabase
    batch_size: int = 500
    max_backoff: float = 30.0
    position: int = 0
    seen: int = 0
    handled: int = 0
    parked: int = 0
    failures: int = 0
    last_error: str = ""
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    _saved_at: float = 0.0
    _retries_checked_at: float = 0.0
    _idle_since: float = 0.0
    _rebuild: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        backoff = 0.1
        prepared = False
        while True:
            try:
                if not prepared:
                    self.position = await self.db.prepare(self.projection)
                    self.seen = self.position
                    prepared = True
                if self._rebuild.is_set():
                    self._rebuild.clear()
                    await self.db.reset(self.projection)
                    self.position = self.seen = 0
                await self.step()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except StaleCheckpoint:
                # another runner (a second API replica) committed first: go on from its position
                prepared = False
            except Exception as exc:
                self.failures += 1
                self.last_error = failure_reason(exc)
                log.exception(
                    "projection %s could not advance past %d; retrying in %.1fs",
                    self.projection.name,
                    self.position,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                prepared = False

    def request_rebuild(self) -> None:
        self._rebuild.set()

    async def step(self) -> int:
        """Fold one batch; returns the number of events read (0 when caught up)."""
        if self._idle_since:
            pause = MIN_POLL_SECONDS - (time.monotonic() - self._idle_since)
            if pause > 0:
                await asyncio.sleep(pause)
        head = await self.store.head_position()
        batch = await self.store.read_all(
            after=self.position, limit=self.batch_size, types=self.projection.types
        )
        if batch:
            await self._fold(batch)
        if len(batch) < self.batch_size:
            await self._caught_up_to(max(self.position, head))
            self._idle_since = time.monotonic()
            if not self._rebuild.is_set():
                await self.store.wait_for_append(max(self.position, head), 1.0)
        else:
            self._idle_since = 0.0
        return len(batch)

    async def _retry_requested(self) -> None:
        """Fold again the parked events someone marked for retry (after a fix). They are folded
        now, after later events: for a projection whose rows depend on order, a rebuild is the
        thorough fix, and `ispbill projections rebuild` does it."""
        now = time.monotonic()
        if now - self._retries_checked_at < _RETRY_POLL_SECONDS:
            return
        self._retries_checked_at = now
        for entry in await self.db.parked(consumer=self.projection.name, status=ParkedStatus.RETRY):
            event = entry.event()
            try:
                statements = list(self.projection.apply(event))
                await self.db.commit(
                    self.projection,
                    statements,
                    from_position=self.position,
                    to_position=self.position,
                )
            except (StoreUnavailable, StaleCheckpoint):
                raise
            except Exception as exc:
                await self.db.park(self.projection.name, event, failure_reason(exc))
                continue
            await self.db.set_parked_status(entry.id, ParkedStatus.RESOLVED)
            self.handled += 1

    async def _caught_up_to(self, head: int) -> None:
        await self._retry_requested()
        now = time.monotonic()
        if head > self.position and now - self._saved_at > _IDLE_SAVE_SECONDS:
            await self.db.commit(self.projection, (), from_position=self.position, to_position=head)
            self.position = head
            self._saved_at = now
        await self._advance(max(self.seen, head))

    async def _advance(self, seen: int) -> None:
        async with self._progress:
            self.seen = max(self.seen, seen)
            self._progress.notify_all()

    async def _fold(self, batch: Sequence[RecordedEvent]) -> None:
        statements, parked = self.projection.fold(batch)
        last = batch[-1].global_position
        try:
            await self.db.commit(
                self.projection,
                statements,
                from_position=self.position,
                to_position=last,
                parked=parked,
            )
        except (StoreUnavailable, StaleCheckpoint):
            raise
        except Exception:
            # A statement the database refused: find its event, one at a time.
            await self._fold_one_by_one(batch)
            return
        self._count(len(batch), parked)
        self.position = last
        self._saved_at = time.monotonic()
        await self._advance(last)

    async def _fold_one_by_one(self, batch: Sequence[RecordedEvent]) -> None:
        for event in batch:
            try:
                statements = list(self.projection.apply(event))
                parked: list[tuple[RecordedEvent, str]] = []
            except Exception as exc:
                statements, parked = [], [(event, failure_reason(exc))]
            try:
                await self.db.commit(
                    self.projection,
                    statements,
                    from_position=self.position,
                    to_position=event.global_position,
                    parked=parked,
                )
            except (StoreUnavailable, StaleCheckpoint):
                raise
            except Exception as exc:
                parked = [(event, failure_reason(exc))]
                await self.db.commit(
                    self.projection,
                    (),
                    from_position=self.position,
                    to_position=event.global_position,
                    parked=parked,
                )
            self._count(1, parked)
            self.position = event.global_position
            await self._advance(self.position)

    def _count(self, handled: int, parked: Sequence[tuple[RecordedEvent, str]]) -> None:
        self.handled += handled - len(parked)
        for event, reason in parked:
            self.parked += 1
            # an alert: operators watch for this line (and the parked count on /healthz)
            log.error(
                "PARKED event %s (%s at %d) for projection %s: %s",
                event.id,
                event.type,
                event.global_position,
                self.projection.name,
                reason,
            )

    async def wait_until_seen(self, position: int, timeout: float) -> bool:
        """Until this projection has looked at the ledger up to `position`; False on timeout."""
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: self.seen >= position)
        except TimeoutError:
            return False
        return True


class Projector:
    """Every projection of a process, each in its own loop."""

    def __init__(
        self, store: EventStore, db: ReadModelDatabase, projections: Sequence[Projection]
    ) -> None:
        names = [p.name for p in projections]
        if len(set(names)) != len(names):
            raise ValueError(f"projection names repeat: {names}")
        self.store = store
        self.db = db
        self.runners = {p.name: ProjectionRunner(p, store, db) for p in projections}
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Forever (until cancelled)."""
        self._tasks = [
            asyncio.create_task(r.run(), name=f"projection-{name}")
            for name, r in self.runners.items()
        ]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def catch_up(self, *names: str, timeout: float = 2.0) -> bool:
        """Read-your-writes: wait until the projections (all, or those named) have looked at
        the ledger up to its head as it is now. False when they did not within `timeout`
        (the read then answers from what the projection has, and says nothing stale)."""
        head = await self.store.head_position()
        runners = [self.runners[n] for n in names] if names else list(self.runners.values())
        results = await asyncio.gather(*(r.wait_until_seen(head, timeout) for r in runners))
        return all(results)

    def rebuild(self, name: str) -> None:
        """Drop and refill one projection from position 0, while the others go on."""
        self.runners[name].request_rebuild()

    async def rebuild_now(self, *names: str) -> dict[str, int]:
        """Rebuild the projections named (every one when none) from position 0 to the current
        head, in this task, reading the ledger ONCE for all of them: each batch is folded by
        every projection that folds its types, and all their rows and checkpoints commit in one
        transaction, while the next batch is read and folded (the commit runs in the database's
        own thread or server meanwhile). Secondary indexes are made after the last batch: a
        bulk load sorts them once instead of growing them row by row. Returns the events
        folded (or parked) per projection. No runner of these projections may be running
        meanwhile (the CLI's --offline, tests, benchmarks)."""
        chosen = [self.runners[n] for n in (names or tuple(self.runners))]
        for runner in chosen:
            await self.db.reset(runner.projection, indexes=False)
            runner.position = runner.seen = 0
            runner.handled = runner.parked = 0
        types: frozenset[str] = frozenset().union(*(r.projection.types for r in chosen))
        head = await self.store.head_position()
        rebuild = _Rebuild(self.db, chosen)
        read: asyncio.Task[list[RecordedEvent]] | None = asyncio.create_task(
            self.store.read_all(after=0, limit=_REBUILD_BATCH, types=types)
        )
        try:
            while read is not None:
                batch = await read
                read = (
                    asyncio.create_task(
                        self.store.read_all(
                            after=batch[-1].global_position, limit=_REBUILD_BATCH, types=types
                        )
                    )
                    if len(batch) == _REBUILD_BATCH
                    else None
                )
                if batch:
                    await rebuild.fold(batch)
            await rebuild.flush()
        finally:
            if read is not None:
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)
            await rebuild.cancel()
        # the head read before the first batch, or the last event folded: never past an
        # event appended after the last read, which the next run folds
        end = max([head] + [r.position for r in chosen])
        for runner in chosen:
            if end > runner.position:
                await self.db.commit(
                    runner.projection, (), from_position=runner.position, to_position=end
                )
                runner.position = end
            await self.db.create_indexes(runner.projection)
            runner.seen = max(runner.seen, runner.position)
        return {r.projection.name: r.handled + r.parked for r in chosen}


#: Events per batch of a bulk rebuild (one transaction for every projection's rows).
_REBUILD_BATCH = 2000


class _Rebuild:
    """The folding and committing half of `Projector.rebuild_now`: batch N commits (in the
    database's thread or server) while batch N+1 is read and folded in this one."""

    def __init__(self, db: ReadModelDatabase, runners: Sequence[ProjectionRunner]) -> None:
        self.db = db
        self.runners = runners
        self._pending: asyncio.Task[None] | None = None
        self._pending_work: list[tuple[ProjectionRunner, Sequence[RecordedEvent], Commit]] = []

    async def fold(self, batch: Sequence[RecordedEvent]) -> None:
        last = batch[-1].global_position
        work: list[tuple[ProjectionRunner, Sequence[RecordedEvent], Commit]] = []
        for runner in self.runners:
            projection = runner.projection
            mine = [e for e in batch if e.type in projection.types]
            statements, parked = projection.fold(mine) if mine else ([], [])
            work.append(
                (runner, mine, Commit(projection, statements, runner.position, last, parked))
            )
        await self.flush()
        commits = [c for _, _, c in work]
        self._pending = asyncio.create_task(self.db.commit_many(commits))
        self._pending_work = work
        for runner, folded, commit in work:  # positions move on; a failed commit redoes them
            runner.position = last
            runner._count(len(folded), commit.parked)

    async def flush(self) -> None:
        """Wait for the commit in flight; when the database refused one of its statements,
        commit that batch again projection by projection, one event at a time where needed
        (the event at fault is parked)."""
        pending, work = self._pending, self._pending_work
        self._pending, self._pending_work = None, []
        if pending is None:
            return
        try:
            await pending
        except (StoreUnavailable, StaleCheckpoint):
            raise
        except Exception:
            for runner, mine, commit in work:
                runner.position = commit.from_position
                runner.handled -= len(mine) - len(commit.parked)
                runner.parked -= len(commit.parked)
                if mine:
                    await runner._fold(mine)
                if runner.position < commit.to_position:
                    await self.db.commit(
                        runner.projection,
                        (),
                        from_position=runner.position,
                        to_position=commit.to_position,
                    )
                    runner.position = commit.to_position

    async def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)


class FreshReads(ReadModelDatabase):
    """The read-model database as the API reads it: each query first waits (up to `timeout`)
    until this process's projections have looked at the ledger up to its head, so that a clerk
    who has just recorded something sees it in the next list (read-your-writes). After the
    timeout the query answers from what the projections hold, and `stale_reads` counts it."""

    def __init__(self, db: ReadModelDatabase, projector: Projector, timeout: float = 2.0) -> None:
        self.db = db
        self.dialect = db.dialect  # type: ignore[misc]
        self._projector = projector
        self._timeout = timeout
        self.stale_reads = 0

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if not await self._projector.catch_up(timeout=self._timeout):
            self.stale_reads += 1
        return await self.db.fetch(sql, params)

    async def prepare(self, projection: Projection) -> int:
        return await self.db.prepare(projection)

    async def commit_many(self, commits: Sequence[Commit]) -> None:
        await self.db.commit_many(commits)

    async def reset(self, projection: Projection, *, indexes: bool = True) -> None:
        await self.db.reset(projection, indexes=indexes)

    async def create_indexes(self, projection: Projection) -> None:
        await self.db.create_indexes(projection)

    async def states(self) -> list[ProjectionState]:
        return await self.db.states()

    async def park(self, consumer: str, event: RecordedEvent, reason: str) -> int:
        return await self.db.park(consumer, event, reason)

    async def parked(
        self, *, consumer: str | None = None, status: str | None = ParkedStatus.PARKED
    ) -> list[ParkedEvent]:
        return await self.db.parked(consumer=consumer, status=status)

    async def parked_event(self, parked_id: int) -> ParkedEvent | None:
        return await self.db.parked_event(parked_id)

    async def set_parked_status(
        self, parked_id: int, status: str, reason: str | None = None
    ) -> bool:
        return await self.db.set_parked_status(parked_id, status, reason)
