"""Read models in PostgreSQL: the PostgreSQL ledger's own schema, or beside a KurrentDB ledger."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg

from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import EventStoreError, StoreUnavailable
from ispbill_core.projections import (
    Commit,
    ParkedStatus,
    Projection,
    ReadModelDatabase,
    StaleCheckpoint,
    grouped,
    is_index,
    short,
    to_pg,
)

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")

_DDL = (
    "CREATE TABLE IF NOT EXISTS rm_projections (name TEXT PRIMARY KEY, version INTEGER NOT NULL,"
    " position BIGINT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS parked_events (id BIGSERIAL PRIMARY KEY,"
    " consumer TEXT NOT NULL, event_id TEXT NOT NULL, global_position BIGINT NOT NULL,"
    " stream TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL,"
    " attempts INTEGER NOT NULL, parked_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
    " envelope TEXT NOT NULL, UNIQUE (consumer, event_id))",
    "CREATE INDEX IF NOT EXISTS parked_events_by_status ON parked_events (status, id)",
)


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


def _now() -> str:
    return datetime.now(UTC).isoformat()


_EXTENSION_SCHEMA = re.compile(r"\{ext:([a-z_][a-z0-9_]*)\}")


async def _with_extension_schemas(conn: Any, sql: str) -> str:
    """`{ext:NAME}` replaced by the schema extension NAME is installed in, quoted: an extension
    lives in one schema per database (another ledger's, perhaps), and its operator classes are
    found only there."""
    for name in set(_EXTENSION_SCHEMA.findall(sql)):
        schema = await conn.fetchval(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = $1", name
        )
        if schema is None:
            raise LookupError(f"extension {name} is not installed")
        quoted = schema if schema.startswith('"') else f'"{schema}"'
        sql = sql.replace(f"{{ext:{name}}}", quoted)
    return sql


class PostgresReadModels(ReadModelDatabase):
    """Tables in one schema (the ledger's), reached through a pool whose search_path is it."""

    dialect: ClassVar[str] = "postgresql"

    def __init__(self, dsn: str, *, schema: str = "ispbill", pool_max: int = 5) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self._pool_max = pool_max
        self._pool: asyncpg.Pool | None = None

    @classmethod
    async def connect(cls, dsn: str, *, schema: str = "ispbill") -> PostgresReadModels:
        db = cls(dsn, schema=schema)
        await db.open()
        return db

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
            raise StoreUnavailable(f"postgresql read models: {exc}") from exc

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise EventStoreError("PostgresReadModels is not open: await open() first")
        return self._pool

    async def _transaction(self, work: Any) -> Any:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql read models: {exc}") from exc

    async def prepare(self, projection: Projection) -> int:
        async def prepare(conn: Any) -> int:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", projection.name)
            row = await conn.fetchrow(
                "SELECT version, position FROM rm_projections WHERE name = $1", projection.name
            )
            if row is not None and int(row[0]) == projection.version:
                for sql in projection.ddl:
                    await conn.execute(sql)
                await self._optional_ddl(conn, projection)
                return int(row[1])
            await self._recreate(conn, projection)
            return 0

        result: int = await self._transaction(prepare)
        return result

    @staticmethod
    async def _recreate(conn: Any, projection: Projection, indexes: bool = True) -> None:
        for table in projection.tables:
            await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        for sql in projection.ddl:
            if indexes or not is_index(sql):
                await conn.execute(sql)
        if indexes:
            await PostgresReadModels._optional_ddl(conn, projection)
        await conn.execute(
            "INSERT INTO rm_projections (name, version, position, updated_at)"
            " VALUES ($1, $2, 0, $3) ON CONFLICT (name) DO UPDATE SET version = excluded.version,"
            " position = 0, updated_at = excluded.updated_at",
            projection.name,
            projection.version,
            _now(),
        )

    @staticmethod
    async def _optional_ddl(conn: Any, projection: Projection) -> None:
        for sql in projection.ddl_postgresql:
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute(await _with_extension_schemas(conn, sql))
            except (asyncpg.exceptions.PostgresError, LookupError) as exc:
                log.warning(
                    "read model %s: skipped %r (%s); its queries work, more slowly",
                    projection.name,
                    sql,
                    exc,
                )

    async def reset(self, projection: Projection, *, indexes: bool = True) -> None:
        async def reset(conn: Any) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", projection.name)
            await self._recreate(conn, projection, indexes)

        await self._transaction(reset)

    async def create_indexes(self, projection: Projection) -> None:
        async def create(conn: Any) -> None:
            for sql in projection.ddl:
                if is_index(sql):
                    await conn.execute(sql)
            await self._optional_ddl(conn, projection)
            for table in projection.tables:
                await conn.execute(f'ANALYZE "{table}"')

        await self._transaction(create)

    async def commit_many(self, commits: Sequence[Commit]) -> None:
        now = _now()

        async def commit(conn: Any) -> None:
            for c in commits:
                moved = await conn.execute(
                    "UPDATE rm_projections SET position = $1, updated_at = $2"
                    " WHERE name = $3 AND position = $4",
                    c.to_position,
                    now,
                    c.projection.name,
                    c.from_position,
                )
                if moved != "UPDATE 1":
                    raise StaleCheckpoint(c.projection.name)
                for sql, rows in grouped(c.statements):
                    if len(rows) == 1:
                        await conn.execute(to_pg(sql), *rows[0])
                    else:
                        await conn.executemany(to_pg(sql), rows)
                for event, reason in c.parked:
                    await self._park(conn, c.projection.name, event, reason)

        await self._transaction(commit)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn:
                rows = await conn.fetch(to_pg(sql), *params)
        except asyncpg.exceptions.UndefinedTableError:
            return []
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql read models: {exc}") from exc
        return [tuple(r) for r in rows]

    # -- parked events -------------------------------------------------------------------
    @staticmethod
    async def _park(conn: Any, consumer: str, event: RecordedEvent, reason: str) -> int:
        now = _now()
        value = await conn.fetchval(
            "INSERT INTO parked_events AS p (consumer, event_id, global_position, stream, type,"
            " reason, status, attempts, parked_at, updated_at, envelope)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8, $9)"
            " ON CONFLICT (consumer, event_id) DO UPDATE SET reason = excluded.reason,"
            " status = excluded.status, attempts = p.attempts + 1,"
            " updated_at = excluded.updated_at RETURNING id",
            consumer,
            str(event.id),
            event.global_position,
            event.stream,
            event.type,
            short(reason),
            ParkedStatus.PARKED,
            now,
            event.model_dump_json(),
        )
        return int(value)

    async def park(self, consumer: str, event: RecordedEvent, reason: str) -> int:
        result: int = await self._transaction(
            lambda conn: self._park(conn, consumer, event, reason)
        )
        return result

    async def set_parked_status(
        self, parked_id: int, status: str, reason: str | None = None
    ) -> bool:
        async def update(conn: Any) -> bool:
            if reason is None:
                done = await conn.execute(
                    "UPDATE parked_events SET status = $1, updated_at = $2 WHERE id = $3",
                    status,
                    _now(),
                    parked_id,
                )
            else:
                done = await conn.execute(
                    "UPDATE parked_events SET status = $1, reason = $2, updated_at = $3"
                    " WHERE id = $4",
                    status,
                    short(reason),
                    _now(),
                    parked_id,
                )
            return bool(done == "UPDATE 1")

        result: bool = await self._transaction(update)
        return result

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
