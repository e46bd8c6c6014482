"""Read models in the SQLite ledger's own file, written under the ledger's writer locks."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import EventStoreError, StoreUnavailable
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.projections import (
    Commit,
    ParkedStatus,
    Projection,
    ReadModelDatabase,
    StaleCheckpoint,
    grouped,
    is_index,
    short,
)

_DDL = (
    "CREATE TABLE IF NOT EXISTS rm_projections (name TEXT PRIMARY KEY, version INTEGER NOT NULL,"
    " position BIGINT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS parked_events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " consumer TEXT NOT NULL, event_id TEXT NOT NULL, global_position BIGINT NOT NULL,"
    " stream TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL,"
    " attempts INTEGER NOT NULL, parked_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
    " envelope TEXT NOT NULL, UNIQUE (consumer, event_id))",
    "CREATE INDEX IF NOT EXISTS parked_events_by_status ON parked_events (status, id)",
)


#: Errors that say the data or the statement is wrong, not that the database is unavailable.
_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SQLiteReadModels(ReadModelDatabase):
    dialect: ClassVar[str] = "sqlite"

    def __init__(self, store: SQLiteEventStore) -> None:
        self._store = store
        self._shared_made = False

    async def _write(self, work: Any) -> Any:
        try:
            return await self._store.run_write(work)
        except _DATA_ERRORS:
            raise
        except sqlite3.OperationalError as exc:
            # locked, disk I/O, full disk: worth retrying, the data is not at fault
            raise StoreUnavailable(f"sqlite read models: {exc}") from exc

    async def _ensure_shared(self) -> None:
        if self._shared_made:
            return

        def create(conn: sqlite3.Connection) -> None:
            for sql in _DDL:
                conn.execute(sql)

        await self._write(create)
        self._shared_made = True

    async def prepare(self, projection: Projection) -> int:
        await self._ensure_shared()

        def prepare(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT version, position FROM rm_projections WHERE name = ?", (projection.name,)
            ).fetchone()
            if row is not None and int(row[0]) == projection.version:
                for sql in projection.ddl:  # a table added since, or dropped by hand
                    conn.execute(sql)
                return int(row[1])
            self._recreate(conn, projection)
            return 0

        result: int = await self._write(prepare)
        return result

    @staticmethod
    def _recreate(conn: sqlite3.Connection, projection: Projection, indexes: bool = True) -> None:
        for table in projection.tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        for sql in projection.ddl:
            if indexes or not is_index(sql):
                conn.execute(sql)
        conn.execute(
            "INSERT INTO rm_projections (name, version, position, updated_at) VALUES (?, ?, 0, ?)"
            " ON CONFLICT (name) DO UPDATE SET version = excluded.version, position = 0,"
            " updated_at = excluded.updated_at",
            (projection.name, projection.version, _now()),
        )

    async def reset(self, projection: Projection, *, indexes: bool = True) -> None:
        await self._ensure_shared()
        await self._write(lambda conn: self._recreate(conn, projection, indexes))

    async def create_indexes(self, projection: Projection) -> None:
        def create(conn: sqlite3.Connection) -> None:
            for sql in projection.ddl:
                if is_index(sql):
                    conn.execute(sql)

        await self._write(create)

    async def commit_many(self, commits: Sequence[Commit]) -> None:
        now = _now()

        def commit(conn: sqlite3.Connection) -> None:
            for c in commits:
                moved = conn.execute(
                    "UPDATE rm_projections SET position = ?, updated_at = ?"
                    " WHERE name = ? AND position = ?",
                    (c.to_position, now, c.projection.name, c.from_position),
                ).rowcount
                if moved != 1:
                    raise StaleCheckpoint(c.projection.name)
                for sql, rows in grouped(c.statements):
                    conn.executemany(sql, rows)
                for event, reason in c.parked:
                    self._park(conn, c.projection.name, event, reason)

        await self._write(commit)

    async def _ready(self) -> None:
        await self._ensure_shared()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return await self._store.run_read(sql, params)
        except EventStoreError as exc:
            if "no such table" in str(exc):
                return []  # a projection not prepared yet (nothing recorded) reads as empty
            raise

    # -- parked events -------------------------------------------------------------------
    @staticmethod
    def _park(conn: sqlite3.Connection, consumer: str, event: RecordedEvent, reason: str) -> int:
        now = _now()
        row = conn.execute(
            "INSERT INTO parked_events (consumer, event_id, global_position, stream, type,"
            " reason, status, attempts, parked_at, updated_at, envelope)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
            " ON CONFLICT (consumer, event_id) DO UPDATE SET reason = excluded.reason,"
            " status = excluded.status, attempts = parked_events.attempts + 1,"
            " updated_at = excluded.updated_at RETURNING id",
            (
                consumer,
                str(event.id),
                event.global_position,
                event.stream,
                event.type,
                short(reason),
                ParkedStatus.PARKED,
                now,
                now,
                event.model_dump_json(),
            ),
        ).fetchone()
        return int(row[0])

    async def park(self, consumer: str, event: RecordedEvent, reason: str) -> int:
        await self._ensure_shared()
        result: int = await self._write(lambda conn: self._park(conn, consumer, event, reason))
        return result

    async def set_parked_status(
        self, parked_id: int, status: str, reason: str | None = None
    ) -> bool:
        await self._ensure_shared()

        def update(conn: sqlite3.Connection) -> bool:
            if reason is None:
                cur = conn.execute(
                    "UPDATE parked_events SET status = ?, updated_at = ? WHERE id = ?",
                    (status, _now(), parked_id),
                )
            else:
                cur = conn.execute(
                    "UPDATE parked_events SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                    (status, short(reason), _now(), parked_id),
                )
            return bool(cur.rowcount)

        result: bool = await self._write(update)
        return result
