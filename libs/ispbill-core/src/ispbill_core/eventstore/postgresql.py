"""PostgreSQL adapter of the event store: asyncpg pool, appends serialized per schema, NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
import zlib
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg

from ispbill_core.events import (
    AnyNewEvent,
    EncodedEvent,
    EventMetadata,
    RecordedEvent,
    encoded,
    timestamp_json,
)
from ispbill_core.eventstore import (
    ANY,
    AppendSignal,
    CheckpointStore,
    EventIdConflict,
    EventStore,
    EventStoreError,
    ExpectedVersion,
    StoreUnavailable,
    WrongExpectedVersion,
    chain,
    check_expected,
)

log = logging.getLogger(__name__)

_AnyConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")

#: How long wait_for_append waits before trying to reopen a lost LISTEN connection.
_RELISTEN_AFTER = 5.0

_SCHEMA_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.events (
    global_position bigserial PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    stream text NOT NULL,
    stream_position integer NOT NULL,
    type text NOT NULL,
    version integer NOT NULL,
    data json NOT NULL,
    metadata json NOT NULL,
    chain_hash bytea,
    UNIQUE (stream, stream_position)
);
CREATE INDEX IF NOT EXISTS events_by_type ON {schema}.events (type, global_position);
CREATE TABLE IF NOT EXISTS {schema}.checkpoints (
    name text PRIMARY KEY,
    position bigint NOT NULL
);
"""

# Connection-level failures: the append may or may not have happened, retry with the same ids.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
)
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (*_UNAVAILABLE, asyncpg.PostgresError)


#: A transaction that only moves a checkpoint does not wait for its WAL flush: the next
#: durable commit flushes it, and a crash before that finds the checkpoint where it was, so
#: the consumer handles those events again (consumers are idempotent). Half of rating's
#: commits were only its checkpoint.
_SQL_RELAXED_COMMIT = "SET LOCAL synchronous_commit TO OFF"

#: The append's lock, and custom plans for the rest of its transaction. The version and id
#: check takes arrays of 1 to thousands of elements; after five executions PostgreSQL may
#: switch a prepared statement to a generic plan, built for whatever the table looked like
#: then. On a fresh ledger that plan (cached while the table was a few rows, before any
#: ANALYZE) scans the whole table comparing every row with every id of the batch: measured at
#: 130-180 ms per 500-event append from ~60,000 events on, against 1.5 ms planned for the
#: actual arrays. Planning each time costs ~0.1 ms per append; `set_config(..., true)` ends
#: with the transaction, and rides on the lock's round trip.
_SQL_LOCK_FOR_APPEND = (
    "SELECT pg_advisory_xact_lock($1), set_config('plan_cache_mode', 'force_custom_plan', true)"
)


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock key for appends to one schema's events table."""
    return zlib.crc32(f"ispbill.events.{schema}".encode()) - 2**31


def _translate(exc: BaseException, what: str) -> EventStoreError:
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable(f"postgresql {what}: {exc}")
    return EventStoreError(f"postgresql {what} failed: {exc}")


async def _keep_session(_conn: _AnyConnection) -> None:
    """Pool reset hook. Pool connections hold no session state (no SET, no LISTEN, only
    transaction-scoped locks), so the default RESET ALL/UNLISTEN round trip on every release
    is skipped; asyncpg still rolls back a transaction left open by a cancelled task."""


def _metadata_json(events: Sequence[EncodedEvent], recorded_at: datetime) -> list[str]:
    """Each event's metadata as stored, recorded_at added; a batch often shares one metadata."""
    stamp = timestamp_json(recorded_at)
    done: dict[str, str] = {}
    out = []
    for event in events:
        text = done.get(event.metadata_json)
        if text is None:
            text = done[event.metadata_json] = event.stamped_metadata(stamp)
        out.append(text)
    return out


def _row_to_event(row: asyncpg.Record) -> RecordedEvent:
    gp, id_, stream, sp, type_, version, data, metadata = row
    return RecordedEvent.stored(
        id=uuid.UUID(bytes=id_.bytes),
        stream=stream,
        stream_position=sp,
        global_position=gp,
        type=type_,
        version=version,
        data_json=data,
        metadata=EventMetadata.model_validate_json(metadata),
    )


class PostgresEventStore(EventStore, CheckpointStore):
    """The ledger in one PostgreSQL schema.

    Appends take a transaction-scoped advisory lock, so global positions (a bigserial) are
    allocated and committed in the same order: a reader polling `global_position > after`
    can never see position n+1 committed while n is still in flight, and so never skips one.
    The price is one writer at a time per schema, which fsync dominates anyway.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "ispbill",
        pool_min: int = 1,
        pool_max: int = 10,
        listen: bool = True,
    ) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._listen = listen
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_lost_at: float | None = None
        self._signal = AppendSignal()
        self._lock_key = _lock_key(schema)
        self._channel = f"ispbill_events_{schema}"
        self._notify_tasks: set[asyncio.Task[None]] = set()
        t = f'"{schema}".events'
        cols = (
            "global_position, id, stream, stream_position, type, version,"
            " data::text, metadata::text"
        )
        self._sql_version = f"SELECT max(stream_position) FROM {t} WHERE stream = $1"  # noqa: S608
        self._sql_head = f"SELECT max(global_position) FROM {t}"  # noqa: S608
        self._sql_versions = (
            f"SELECT s.stream, (SELECT max(stream_position) FROM {t} e"  # noqa: S608
            " WHERE e.stream = s.stream) FROM unnest($1::text[]) AS s(stream)"
        )
        # Every stream's version, any of the ids already recorded, and the chain's head hash
        # (the row with stream NULL), for a whole append_many.
        self._sql_check_many = (
            f"SELECT NULL::uuid AS id, s.stream, (SELECT max(stream_position) FROM {t} e"  # noqa: S608
            f" WHERE e.stream = s.stream) AS version, NULL::bytea AS chain_hash"
            f" FROM unnest($1::text[]) AS s(stream)"
            f" UNION ALL SELECT id, stream, NULL, NULL FROM {t} WHERE id = ANY($2::uuid[])"
            f" UNION ALL (SELECT NULL, NULL, NULL, chain_hash FROM {t}"
            "  ORDER BY global_position DESC LIMIT 1)"
        )
        # Every row of an append_many in one statement, in the order given.
        self._sql_insert_many = (
            f"WITH ins AS (INSERT INTO {t} (id, stream, stream_position, type, version, data,"  # noqa: S608
            " metadata, chain_hash) SELECT u.id, u.stream, u.pos, u.type, u.version,"
            " u.data::json, u.metadata::json, u.chain_hash FROM unnest($1::uuid[], $2::text[],"
            " $3::int[], $4::text[], $5::int[], $6::text[], $7::text[], $8::bytea[])"
            " WITH ORDINALITY AS u(id, stream, pos, type, version, data, metadata, chain_hash, n)"
            " ORDER BY u.n RETURNING global_position)"
            " SELECT m, pg_notify($9, m::text) FROM (SELECT max(global_position) AS m FROM ins) s"
        )
        self._sql_chain_page = (
            f"SELECT {cols}, chain_hash FROM {t} WHERE global_position > $1"  # noqa: S608
            " ORDER BY global_position LIMIT $2"
        )
        self._sql_read_stream = (
            f"SELECT {cols} FROM {t} WHERE stream = $1 AND stream_position >= $2"  # noqa: S608
            " ORDER BY stream_position LIMIT $3"
        )
        self._sql_read_streams = (
            f"SELECT {cols} FROM {t} WHERE stream = ANY($1::text[])"  # noqa: S608
            " ORDER BY stream, stream_position"
        )
        self._sql_read_all = (
            f"SELECT {cols} FROM {t} WHERE global_position > $1"  # noqa: S608
            " ORDER BY global_position LIMIT $2"
        )
        # Each type read on its own from events_by_type (type, global_position), then merged:
        # `type = ANY(...) ORDER BY global_position LIMIT n` was planned as a walk of the
        # primary key from `after` that filters by type, so a reader of rare types (rating
        # following plan and subscription changes) scanned everything appended since its
        # position on every call: 30-60 ms per call at 250,000 events, and growing.
        lateral_cols = ", ".join(f"e.{c.strip()}" for c in cols.split(","))
        self._sql_read_all_types = (
            f"SELECT {lateral_cols} FROM unnest($2::text[]) AS wanted(type)"  # noqa: S608
            f" CROSS JOIN LATERAL (SELECT {cols} FROM {t}"
            "   WHERE type = wanted.type AND global_position > $1"
            "   ORDER BY global_position LIMIT $3) e"
            " ORDER BY e.global_position LIMIT $3"
        )
        c = f'"{schema}".checkpoints'
        self._sql_load_checkpoint = f"SELECT position FROM {c} WHERE name = $1"  # noqa: S608
        self._sql_save_checkpoint = (
            f"INSERT INTO {c} AS c (name, position) VALUES ($1, $2)"  # noqa: S608
            " ON CONFLICT (name) DO UPDATE SET position = greatest(c.position, excluded.position)"
        )

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        schema: str = "ispbill",
        pool_min: int = 1,
        pool_max: int = 10,
        listen: bool = True,
    ) -> PostgresEventStore:
        """Create the store and open it (pool, schema and tables, LISTEN connection)."""
        store = cls(dsn, schema=schema, pool_min=pool_min, pool_max=pool_max, listen=listen)
        await store.open()
        return store

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                reset=_keep_session,
            )
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, "connect") from exc
        self._pool = pool
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Two processes starting at once would race on CREATE ... IF NOT EXISTS.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
                await conn.execute(_SCHEMA_DDL.format(schema=f'"{self.schema}"'))
                await self._chain_existing_rows(conn)
            if self._listen:
                await self._start_listening()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, _DRIVER_ERRORS):
                raise _translate(exc, "open") from exc
            raise

    async def _chain_existing_rows(self, conn: _AnyConnection) -> None:
        """A ledger written before the hash chain (ADR 0031) gets its column, and every row
        its hash, in global order: once, under the append lock, when first opened since."""
        t = f'"{self.schema}".events'
        has_column = await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1"
            " AND table_name = 'events' AND column_name = 'chain_hash'",
            self.schema,
        )
        if has_column:
            return
        await conn.execute(f"ALTER TABLE {t} ADD COLUMN chain_hash bytea")
        previous = chain.GENESIS
        after = 0
        while True:
            rows = await conn.fetch(self._sql_chain_page, after, 5000)
            if not rows:
                return
            positions, hashes = [], []
            for gp, id_, stream, sp, type_, version, data, metadata, _ in rows:
                previous = chain.link(
                    previous, str(id_), stream, sp, type_, version, data, metadata
                )
                positions.append(gp)
                hashes.append(previous)
            await conn.execute(
                f"UPDATE {t} e SET chain_hash = u.h FROM unnest($1::bigint[], $2::bytea[])"  # noqa: S608
                " AS u(gp, h) WHERE e.global_position = u.gp",
                positions,
                hashes,
            )
            after = rows[-1][0]

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise EventStoreError("PostgresEventStore is not open: await store.open() first")
        return self._pool

    # -- live wake-ups -------------------------------------------------------------------
    async def _start_listening(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn
        self._listener_lost_at = None

    def _on_notify(self, _conn: _AnyConnection, _pid: int, _channel: str, payload: object) -> None:
        try:
            head = int(str(payload))
        except ValueError:
            return
        task = asyncio.get_running_loop().create_task(self._signal.notify(head))
        self._notify_tasks.add(task)
        task.add_done_callback(self._notify_tasks.discard)

    def _on_listener_lost(self, _conn: _AnyConnection) -> None:
        self._listener = None
        self._listener_lost_at = asyncio.get_running_loop().time()

    async def _relisten_if_lost(self) -> None:
        lost_at = self._listener_lost_at
        if lost_at is None or self._pool is None:
            return
        if asyncio.get_running_loop().time() - lost_at < _RELISTEN_AFTER:
            return
        try:
            await self._start_listening()
        except _DRIVER_ERRORS as exc:
            # Polling still works; try again later.
            self._listener_lost_at = asyncio.get_running_loop().time()
            log.warning("LISTEN on %s failed, polling only: %s", self._channel, exc)

    # -- writes --------------------------------------------------------------------------
    async def append(
        self, stream: str, events: Sequence[AnyNewEvent], expected_version: ExpectedVersion
    ) -> int:
        if not events:
            raise ValueError("append needs at least one event")
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                [version], head = await self._append_many_in(
                    conn, [(stream, events, expected_version)]
                )
        except (EventStoreError, ValueError):
            raise
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, f"append to {stream!r}") from exc
        if head:
            await self._signal.notify(head)
        return version

    async def append_many(
        self,
        batches: Sequence[tuple[str, Sequence[AnyNewEvent], ExpectedVersion]],
        *,
        checkpoint: tuple[str, int] | None = None,
    ) -> list[int]:
        """One transaction, and a fixed number of round trips whatever the number of streams:
        the lock, one query for every stream's version and the ids already recorded, the
        rules of `append` checked here stream by stream (in the order given, a stream named
        twice sees its first batch), then one INSERT of every row."""
        if any(not events for _, events, _ in batches):
            raise ValueError("append needs at least one event")
        if not batches and checkpoint is None:
            return []
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                if not batches:
                    await conn.execute(_SQL_RELAXED_COMMIT)
                versions, head = await self._append_many_in(conn, batches) if batches else ([], 0)
                if checkpoint is not None:
                    await conn.execute(self._sql_save_checkpoint, *checkpoint)
        except (EventStoreError, ValueError):
            raise
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, f"append to {len(batches)} streams") from exc
        if head:
            await self._signal.notify(head)
        return versions

    async def _append_many_in(
        self,
        conn: _AnyConnection,
        batches: Sequence[tuple[str, Sequence[AnyNewEvent], ExpectedVersion]],
    ) -> tuple[list[int], int]:
        encoded_batches = [(stream, [encoded(e) for e in events]) for stream, events, _ in batches]
        # Each id parsed (and so checked) once: a second parse cost 0.5 ms per 500 events.
        batch_ids = [[uuid.UUID(e.id) for e in batch] for _, batch in encoded_batches]
        all_ids = [i for ids in batch_ids for i in ids]
        streams = list(dict.fromkeys(stream for stream, _ in encoded_batches))
        # Its own statement: in READ COMMITTED each statement takes a fresh snapshot, so the
        # reads below see every append committed before the lock was granted.
        await conn.execute(_SQL_LOCK_FOR_APPEND, self._lock_key)
        current: dict[str, int | None] = {}
        recorded: dict[uuid.UUID, str] = {}
        previous = chain.GENESIS
        for row in await conn.fetch(self._sql_check_many, streams, all_ids):
            if row["stream"] is None:
                if row["chain_hash"] is not None:
                    previous = bytes(row["chain_hash"])
            elif row["id"] is None:
                version = row["version"]
                current[row["stream"]] = None if version is None else int(version)
            else:
                recorded[row["id"]] = row["stream"]
        versions: list[int] = []
        rows: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
        now = datetime.now(UTC)
        for (stream, batch), ids, (_, _, expected) in zip(
            encoded_batches, batch_ids, batches, strict=True
        ):
            version = current.get(stream)
            already = [i for i in ids if i in recorded]
            if already:
                if len(already) == len(ids) and {recorded[i] for i in already} == {stream}:
                    versions.append(0 if version is None else version)
                    continue
                raise EventIdConflict(
                    f"stream {stream!r}: ids {sorted(str(i) for i in already)} already"
                    " recorded elsewhere or in a different batch"
                )
            check_expected(stream, expected, version)
            start = 0 if version is None else version + 1
            ids_, streams_, positions, types, event_versions, data, metadata, hashes = rows
            ids_.extend(ids)
            streams_.extend([stream] * len(batch))
            positions.extend(range(start, start + len(batch)))
            types.extend(e.type for e in batch)
            event_versions.extend(e.version for e in batch)
            data.extend(e.data_json for e in batch)
            stamped = _metadata_json(batch, now)
            metadata.extend(stamped)
            for position, event, meta in zip(
                range(start, start + len(batch)), batch, stamped, strict=True
            ):
                previous = chain.link(
                    previous,
                    event.id,
                    stream,
                    position,
                    event.type,
                    event.version,
                    event.data_json,
                    meta,
                )
                hashes.append(previous)
            current[stream] = start + len(batch) - 1
            versions.append(start + len(batch) - 1)
            for i in ids:
                recorded[i] = stream
        if not rows[0]:
            return versions, 0
        try:
            row = await conn.fetchrow(self._sql_insert_many, *rows, self._channel)
        except asyncpg.UniqueViolationError as exc:
            # Only reachable if something writes without the lock, or ids repeat in a batch.
            if "stream_position" in str(exc.constraint_name or ""):
                raise WrongExpectedVersion(", ".join(streams)[:200], ANY, None) from exc
            raise EventIdConflict(f"append of {len(batches)} streams: {exc}") from exc
        assert row is not None
        return versions, int(row[0])

    # -- reads ---------------------------------------------------------------------------
    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, "read") from exc

    async def read_stream(
        self, stream: str, *, from_position: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        rows = await self._fetch(self._sql_read_stream, stream, from_position, limit)
        return [_row_to_event(r) for r in rows]

    async def read_streams(self, streams: Collection[str]) -> dict[str, list[RecordedEvent]]:
        names = list(dict.fromkeys(streams))
        found: dict[str, list[RecordedEvent]] = {name: [] for name in names}
        for at in range(0, len(names), 1000):
            for row in await self._fetch(self._sql_read_streams, names[at : at + 1000]):
                found[row[2]].append(_row_to_event(row))
        return found

    async def stream_versions(self, streams: Collection[str]) -> dict[str, int | None]:
        names = list(dict.fromkeys(streams))
        found: dict[str, int | None] = {}
        for at in range(0, len(names), 1000):
            for stream, version in await self._fetch(self._sql_versions, names[at : at + 1000]):
                found[stream] = None if version is None else int(version)
        return found

    async def stream_version(self, stream: str) -> int | None:
        rows = await self._fetch(self._sql_version, stream)
        value = rows[0][0] if rows else None
        return None if value is None else int(value)

    async def read_all(
        self, *, after: int = 0, limit: int = 1000, types: Collection[str] | None = None
    ) -> list[RecordedEvent]:
        if types is None:
            rows = await self._fetch(self._sql_read_all, after, limit)
        else:
            rows = await self._fetch(self._sql_read_all_types, after, sorted(set(types)), limit)
        return [_row_to_event(r) for r in rows]

    async def verify_chain(self, *, anchors: dict[int, bytes] | None = None) -> chain.ChainReport:
        walker = chain.ChainWalker(anchors)
        after = 0
        while True:
            rows = await self._fetch(self._sql_chain_page, after, 5000)
            page = [(r[0], str(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows]
            if not page or not walker.feed(page):
                return walker.finish()
            after = page[-1][0]

    async def head_position(self) -> int:
        rows = await self._fetch(self._sql_head)
        return int(rows[0][0] or 0) if rows else 0

    async def wait_for_append(self, after: int, timeout: float) -> None:
        # NOTIFY wakes us for any process's appends; the timeout is the polling fallback
        # for when the LISTEN connection is down (or a notification was missed).
        await self._relisten_if_lost()
        await self._signal.wait(after, timeout)

    # -- checkpoints ---------------------------------------------------------------------
    async def load_checkpoint(self, name: str) -> int:
        rows = await self._fetch(self._sql_load_checkpoint, name)
        return int(rows[0][0]) if rows else 0

    async def save_checkpoint(self, name: str, position: int) -> None:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(_SQL_RELAXED_COMMIT)
                await conn.execute(self._sql_save_checkpoint, name, position)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, f"save checkpoint {name!r}") from exc

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        self._listener_lost_at = None
        if listener is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await listener.remove_listener(self._channel, self._on_notify)
            await listener.close()
        for task in list(self._notify_tasks):
            task.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
