"""Timers in PostgreSQL: the PostgreSQL ledger's own schema, or the read models' beside KurrentDB.

Claims lock the due rows they take with FOR UPDATE SKIP LOCKED, so runners in several
processes claiming at once get disjoint timers without waiting for each other; the lease
written in the same statement keeps the rows theirs after the commit.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from ispbill_core.eventstore import EventStoreError, StoreUnavailable
from ispbill_core.timers import DEFAULT_LEASE, DueTimer, Timer, Timers, payload_of, unique_by_id

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")

_DDL = (
    "CREATE TABLE IF NOT EXISTS timers (timer_id text PRIMARY KEY, kind text NOT NULL,"
    " due_at timestamptz NOT NULL, payload text NOT NULL, attempts integer NOT NULL DEFAULT 0,"
    " claim text, lease_until timestamptz)",
    "CREATE INDEX IF NOT EXISTS timers_by_due ON timers (due_at)",
)

#: Every timer of a batch in one statement (one round trip), whatever the batch's size.
_UPSERT = (
    "INSERT INTO timers AS t (timer_id, kind, due_at, payload, attempts)"
    " SELECT id, kind, due, payload, 0"
    " FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])"
    " AS u(id, kind, due, payload)"
    " ON CONFLICT (timer_id) DO UPDATE SET kind = excluded.kind, due_at = excluded.due_at,"
    " payload = excluded.payload, attempts = 0, claim = NULL, lease_until = NULL"
)

_CANCEL = "DELETE FROM timers WHERE timer_id = ANY($1::text[])"

_CLAIM = """
WITH due AS (
    SELECT timer_id FROM timers
    WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until <= $1) {kinds}
    ORDER BY due_at, timer_id LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE timers AS t SET claim = $3, lease_until = $4, attempts = t.attempts + 1
FROM due WHERE t.timer_id = due.timer_id
RETURNING t.timer_id, t.kind, t.due_at, t.payload, t.attempts, t.claim
"""

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


def _due(row: Any) -> DueTimer:
    return DueTimer(
        row["timer_id"],
        row["kind"],
        row["due_at"],
        payload_of(row["payload"]),
        int(row["attempts"]),
        row["claim"] or "",
    )


class PostgresTimers(Timers):
    """The `timers` table in one schema, through a small pool of its own."""

    def __init__(self, dsn: str, *, schema: str = "ispbill", pool_max: int = 3) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self._pool_max = pool_max
        self._pool: asyncpg.Pool | None = None

    @classmethod
    async def connect(cls, dsn: str, *, schema: str = "ispbill") -> PostgresTimers:
        timers = cls(dsn, schema=schema)
        await timers.open()
        return timers

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            admin = await asyncpg.connect(self.dsn)
            try:
                await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await admin.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self._pool_max,
                server_settings={"search_path": f'"{self.schema}"'},
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.schema)
                for sql in _DDL:
                    await conn.execute(sql)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql timers: {exc}") from exc

    async def _run(self, work: Any) -> Any:
        if self._pool is None:
            raise EventStoreError("PostgresTimers is not open: await open() first")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql timers: {exc}") from exc

    async def schedule_many(self, timers: Sequence[Timer], *, cancel: Collection[str] = ()) -> None:
        unique = unique_by_id(timers)
        doomed = sorted(set(cancel))
        if not unique and not doomed:
            return

        async def write(conn: Any) -> None:
            if unique:
                await conn.execute(
                    _UPSERT,
                    [t.timer_id for t in unique],
                    [t.kind for t in unique],
                    [t.due_at for t in unique],
                    [t.payload_json() for t in unique],
                )
            if doomed:
                await conn.execute(_CANCEL, doomed)

        await self._run(write)

    async def claim_due(
        self,
        now: datetime,
        *,
        limit: int = 100,
        kinds: Collection[str] | None = None,
        lease: timedelta = DEFAULT_LEASE,
    ) -> list[DueTimer]:
        params: list[Any] = [now, limit, str(uuid.uuid4()), now + lease]
        if kinds is None:
            sql = _CLAIM.format(kinds="")
        else:
            if not kinds:
                return []
            sql = _CLAIM.format(kinds="AND kind = ANY($5::text[])")
            params.append(sorted(kinds))

        async def take(conn: Any) -> list[DueTimer]:
            rows = await conn.fetch(sql, *params)
            return sorted((_due(r) for r in rows), key=lambda t: (t.due_at, t.timer_id))

        claimed: list[DueTimer] = await self._run(take)
        return claimed

    async def complete(self, timer: DueTimer) -> bool:
        async def delete(conn: Any) -> bool:
            done = await conn.execute(
                "DELETE FROM timers WHERE timer_id = $1 AND claim = $2",
                timer.timer_id,
                timer.claim,
            )
            return bool(done == "DELETE 1")

        result: bool = await self._run(delete)
        return result

    async def postpone(
        self, timer: DueTimer, until: datetime, *, payload: Mapping[str, Any] | None = None
    ) -> bool:
        moved = timer if payload is None else replace(timer, payload=payload)

        async def move(conn: Any) -> bool:
            done = await conn.execute(
                "UPDATE timers SET due_at = $1, payload = $2, claim = NULL, lease_until = NULL"
                " WHERE timer_id = $3 AND claim = $4",
                until,
                moved.payload_json(),
                timer.timer_id,
                timer.claim,
            )
            return bool(done == "UPDATE 1")

        result: bool = await self._run(move)
        return result

    async def get(self, timer_id: str) -> DueTimer | None:
        async def read(conn: Any) -> DueTimer | None:
            row = await conn.fetchrow(
                "SELECT timer_id, kind, due_at, payload, attempts, claim FROM timers"
                " WHERE timer_id = $1",
                timer_id,
            )
            return None if row is None else _due(row)

        found: DueTimer | None = await self._run(read)
        return found

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
