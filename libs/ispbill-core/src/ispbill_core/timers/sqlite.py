"""Timers in the SQLite ledger's own file, written under the ledger's writer locks."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ispbill_core.eventstore import StoreUnavailable
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.timers import DEFAULT_LEASE, DueTimer, Timer, Timers, payload_of, unique_by_id

_DDL = (
    # Times are microseconds since the epoch (UTC): ordered and compared as integers.
    "CREATE TABLE IF NOT EXISTS timers (timer_id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
    " due_at INTEGER NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " claim TEXT, lease_until INTEGER)",
    "CREATE INDEX IF NOT EXISTS timers_by_due ON timers (due_at)",
)

_UPSERT = (
    "INSERT INTO timers (timer_id, kind, due_at, payload, attempts, claim, lease_until)"
    " VALUES (?, ?, ?, ?, 0, NULL, NULL) ON CONFLICT (timer_id) DO UPDATE SET"
    " kind = excluded.kind, due_at = excluded.due_at, payload = excluded.payload,"
    " attempts = 0, claim = NULL, lease_until = NULL"
)

_DUE = "due_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"

_CHUNK = 500


def micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _due(row: Sequence[Any]) -> DueTimer:
    timer_id, kind, due_at, payload, attempts, claim = row
    return DueTimer(
        timer_id, kind, from_micros(due_at), payload_of(payload), int(attempts), claim or ""
    )


class SQLiteTimers(Timers):
    def __init__(self, store: SQLiteEventStore) -> None:
        self._store = store
        self._made = False

    async def _ready(self) -> None:
        if not self._made:
            await self._run(self._create)
            self._made = True

    async def _write(self, work: Any) -> Any:
        await self._ready()
        return await self._run(work)

    async def _run(self, work: Any) -> Any:
        try:
            return await self._store.run_write(work)
        except sqlite3.OperationalError as exc:
            # locked, disk I/O, a full disk: worth retrying, the timer is not at fault
            raise StoreUnavailable(f"sqlite timers: {exc}") from exc

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        for sql in _DDL:
            conn.execute(sql)

    async def schedule_many(self, timers: Sequence[Timer], *, cancel: Collection[str] = ()) -> None:
        rows = [
            (t.timer_id, t.kind, micros(t.due_at), t.payload_json()) for t in unique_by_id(timers)
        ]
        doomed = sorted(set(cancel))
        if not rows and not doomed:
            return

        def write(conn: sqlite3.Connection) -> None:
            if rows:
                conn.executemany(_UPSERT, rows)
            for at in range(0, len(doomed), _CHUNK):
                chunk = doomed[at : at + _CHUNK]
                conn.execute(
                    f"DELETE FROM timers WHERE timer_id IN ({', '.join('?' * len(chunk))})",  # noqa: S608 - placeholders only
                    chunk,
                )

        await self._write(write)

    async def claim_due(
        self,
        now: datetime,
        *,
        limit: int = 100,
        kinds: Collection[str] | None = None,
        lease: timedelta = DEFAULT_LEASE,
    ) -> list[DueTimer]:
        at = micros(now)
        kind_list = sorted(kinds) if kinds is not None else None
        if kind_list == []:
            return []
        where = _DUE
        params: list[Any] = [at, at]
        if kind_list is not None:
            where += f" AND kind IN ({', '.join('?' * len(kind_list))})"
            params += kind_list
        # A read first: an idle runner polls every second, and a write transaction per poll
        # would cost an fsync each time.
        await self._ready()
        if not await self._any_due(where, params):
            return []
        claim = str(uuid.uuid4())

        def take(conn: sqlite3.Connection) -> list[DueTimer]:
            rows = conn.execute(
                "UPDATE timers SET claim = ?, lease_until = ?, attempts = attempts + 1"  # noqa: S608 - placeholders only
                " WHERE timer_id IN (SELECT timer_id FROM timers"
                f" WHERE {where} ORDER BY due_at, timer_id LIMIT ?)"
                " RETURNING timer_id, kind, due_at, payload, attempts, claim",
                [claim, micros(now + lease), *params, limit],
            ).fetchall()
            return sorted((_due(r) for r in rows), key=lambda t: (t.due_at, t.timer_id))

        claimed: list[DueTimer] = await self._write(take)
        return claimed

    async def _any_due(self, where: str, params: Sequence[Any]) -> bool:
        rows = await self._store.run_read(
            f"SELECT 1 FROM timers WHERE {where} LIMIT 1",  # noqa: S608 - placeholders only
            params,
        )
        return bool(rows)

    async def complete(self, timer: DueTimer) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return bool(
                conn.execute(
                    "DELETE FROM timers WHERE timer_id = ? AND claim = ?",
                    (timer.timer_id, timer.claim),
                ).rowcount
            )

        done: bool = await self._write(delete)
        return done

    async def postpone(
        self, timer: DueTimer, until: datetime, *, payload: Mapping[str, Any] | None = None
    ) -> bool:
        moved = timer if payload is None else replace(timer, payload=payload)

        def move(conn: sqlite3.Connection) -> bool:
            return bool(
                conn.execute(
                    "UPDATE timers SET due_at = ?, payload = ?, claim = NULL, lease_until = NULL"
                    " WHERE timer_id = ? AND claim = ?",
                    (micros(until), moved.payload_json(), timer.timer_id, timer.claim),
                ).rowcount
            )

        done: bool = await self._write(move)
        return done

    async def get(self, timer_id: str) -> DueTimer | None:
        await self._ready()
        rows = await self._store.run_read(
            "SELECT timer_id, kind, due_at, payload, attempts, claim FROM timers"
            " WHERE timer_id = ?",
            (timer_id,),
        )
        return _due(rows[0]) if rows else None
