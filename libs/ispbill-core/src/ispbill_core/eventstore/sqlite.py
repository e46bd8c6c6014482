"""SQLite adapter of the event store: the embedded default, one file, WAL, fsync on commit."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ispbill_core.events import AnyNewEvent, EventMetadata, RecordedEvent, encoded, timestamp_json
from ispbill_core.eventstore import (
    AppendSignal,
    CheckpointStore,
    EventIdConflict,
    EventStore,
    EventStoreError,
    ExpectedVersion,
    chain,
    check_expected,
)
from ispbill_core.files import open_private, private_file, private_parents, restrict

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    stream_position INTEGER NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    chain_hash BLOB,
    UNIQUE (stream, stream_position)
);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, global_position);
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
"""

_SAVE_CHECKPOINT = (
    "INSERT INTO checkpoints (name, position) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)"
)

#: Streams read by one query of read_streams (SQLite binds at most 32,766 parameters).
_STREAMS_PER_QUERY = 500

#: Page size of a new ledger file.
PAGE_SIZE = 16384

T = TypeVar("T")

_COLUMNS = "global_position, id, stream, stream_position, type, version, data, metadata"


def _row_to_event(row: tuple[Any, ...]) -> RecordedEvent:
    gp, id_, stream, sp, type_, version, data, metadata = row
    return RecordedEvent.stored(
        id=uuid.UUID(id_),
        stream=stream,
        stream_position=sp,
        global_position=gp,
        type=type_,
        version=version,
        data_json=data,
        metadata=EventMetadata.model_validate_json(metadata),
    )


def _chain_head(conn: sqlite3.Connection) -> bytes:
    row = conn.execute(
        "SELECT chain_hash FROM events ORDER BY global_position DESC LIMIT 1"
    ).fetchone()
    return chain.GENESIS if row is None or row[0] is None else bytes(row[0])


def _chain_existing_rows(conn: sqlite3.Connection) -> None:
    """A ledger written before the hash chain (ADR 0031) gets its column, and every row
    its hash, in global order: once, in one transaction, when it is first opened since."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    if "chain_hash" in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE events ADD COLUMN chain_hash BLOB")
        previous = chain.GENESIS
        after = 0
        while True:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE global_position > ?"  # noqa: S608
                " ORDER BY global_position LIMIT 5000",
                (after,),
            ).fetchall()
            if not rows:
                break
            updates = []
            for gp, id_, stream, sp, type_, version, data, metadata in rows:
                previous = chain.link(previous, id_, stream, sp, type_, version, data, metadata)
                updates.append((previous, gp))
            conn.executemany("UPDATE events SET chain_hash = ? WHERE global_position = ?", updates)
            after = rows[-1][0]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SQLiteEventStore(EventStore, CheckpointStore):
    """One writer connection and one reader connection, each used from worker threads (the
    writer from the loop's own thread with `write_on_loop`); writer processes of one file take
    turns on an flock beside it."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", write_on_loop: bool = False
    ) -> None:
        """`write_on_loop`: run appends on the event loop's own thread, blocking it for the
        transaction (a few ms per batch, the fsync included), rather than in a worker thread.
        For a process whose loop has nothing else to do meanwhile, like the usage collector:
        there, binding each row in a worker thread while the loop screened packets handed the
        GIL back and forth per row (14.4 us of lock time per row under load, against 8.7 us)."""
        self.path = str(path)
        self._write_on_loop = write_on_loop
        self._synchronous = synchronous.upper()
        if self.path != ":memory:":
            # 0600 before SQLite opens it: SQLite gives the -wal and -shm files the database
            # file's mode, so the whole ledger stays its owner's whatever the umask.
            private_parents(self.path)
            private_file(self.path)
            for companion in ("-wal", "-shm"):
                restrict(f"{self.path}{companion}")
        self._lock_file = (
            None if self.path == ":memory:" else open_private(f"{self.path}-writers.lock", "ab")
        )
        # Opening takes the writers' flock too: switching a new file to WAL needs SQLite's
        # exclusive lock, and a second process doing the same at that moment gets "database is
        # locked" at once, without its busy handler being consulted.
        with self._writers_lock():
            self._writer = self._connect(synchronous)
            self._writer.executescript(SCHEMA)
            _chain_existing_rows(self._writer)
            # ":memory:" databases are private to a connection, so readers share the writer.
            self._reader = self._writer if self.path == ":memory:" else self._connect(synchronous)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock() if self._reader is not self._writer else self._write_lock
        self._signal = AppendSignal()

    @contextlib.contextmanager
    def _writers_lock(self) -> Iterator[None]:
        """Exclusive among this ledger's writer processes (an flock on a file beside it).

        SQLite lets one writer in at a time too, but a writer that finds the database locked
        sleeps in its busy handler (1, 2, 5, 10 ms...) and often wakes long after the lock was
        released; with several collector processes on one ledger that idled a third of the
        CPU. Waiting on the flock in the append's thread wakes the next writer as soon as the
        previous commit is done.
        """
        if self._lock_file is None:
            yield
            return
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # Only a new, empty database takes it (an existing ledger keeps its page size). 16 KiB
        # pages: a batch commit writes a quarter of the WAL frames, and a checkpoint a quarter
        # of the pages, of SQLite's default 4 KiB; the collector acknowledged 7-12 % more per
        # second with them (bench/RESULTS.md).
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    # -- writes --------------------------------------------------------------------------
    async def append(
        self, stream: str, events: Sequence[AnyNewEvent], expected_version: ExpectedVersion
    ) -> int:
        if not events:
            raise ValueError("append needs at least one event")
        if self._write_on_loop:
            version, head = self._append_sync(stream, events, expected_version)
        else:
            version, head = await asyncio.to_thread(
                self._append_sync, stream, events, expected_version
            )
        if head:
            await self._signal.notify(head)
        return version

    async def append_many(
        self,
        batches: Sequence[tuple[str, Sequence[AnyNewEvent], ExpectedVersion]],
        *,
        checkpoint: tuple[str, int] | None = None,
    ) -> list[int]:
        if any(not events for _, events, _ in batches):
            raise ValueError("append needs at least one event")
        if not batches and checkpoint is None:
            return []
        if self._write_on_loop:
            versions, head = self._append_many_sync(batches, checkpoint)
        else:
            versions, head = await asyncio.to_thread(self._append_many_sync, batches, checkpoint)
        if head:
            await self._signal.notify(head)
        return versions

    def _append_sync(
        self, stream: str, events: Sequence[AnyNewEvent], expected: ExpectedVersion
    ) -> tuple[int, int]:
        versions, head = self._append_many_sync([(stream, events, expected)])
        return versions[0], head

    def _append_many_sync(
        self,
        batches: Sequence[tuple[str, Sequence[AnyNewEvent], ExpectedVersion]],
        checkpoint: tuple[str, int] | None = None,
    ) -> tuple[list[int], int]:
        """One transaction (one fsync) for every stream's batch, and the checkpoint: all of
        them or none."""
        now = datetime.now(UTC)
        with self._write_lock, self._writers_lock():
            conn = self._writer
            stream = batches[0][0] if batches else f"checkpoint {checkpoint}"
            if not batches and checkpoint is not None:
                with self._relaxed(conn):
                    try:
                        conn.execute(_SAVE_CHECKPOINT, checkpoint)
                    except sqlite3.Error as exc:
                        raise EventStoreError(f"sqlite save checkpoint: {exc}") from exc
                return [], 0
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    versions, head = self._append_all(conn, batches, now)
                    if checkpoint is not None:
                        conn.execute(_SAVE_CHECKPOINT, checkpoint)
                    if head or checkpoint is not None:
                        conn.execute("COMMIT")
                    else:
                        conn.execute("ROLLBACK")  # every batch was a retry: nothing to write
                    return versions, head
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise EventStoreError(f"sqlite append to {stream!r} failed: {exc}") from exc

    @contextlib.contextmanager
    def _relaxed(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A commit that only moves a checkpoint, without its own fsync (WAL with
        synchronous=NORMAL): the next durable commit syncs it, and a power cut before that
        finds the checkpoint where it was before, so the consumer handles those events again
        (consumers are idempotent). Half of rating's commits were only its checkpoint."""
        if (
            self._synchronous not in ("FULL", "EXTRA", "2", "3")
            or self.path == ":memory:"
            or conn.in_transaction
        ):
            yield
            return
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise EventStoreError(f"sqlite: cannot relax a checkpoint's commit: {exc}") from exc
        try:
            yield
        finally:
            try:
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
            except sqlite3.Error as exc:  # never go on appending events without their fsync
                conn.close()
                raise EventStoreError(
                    f"sqlite: cannot restore synchronous={self._synchronous}; the writer"
                    f" connection is closed: {exc}"
                ) from exc

    def _append_all(
        self,
        conn: sqlite3.Connection,
        batches: Sequence[tuple[str, Sequence[AnyNewEvent], ExpectedVersion]],
        now: datetime,
    ) -> tuple[list[int], int]:
        """Inside an open transaction: each stream's version after its batch, and the last
        global position written (0 when every batch was recorded before). The ids and the
        streams' versions are looked up for all the batches at once, and all the rows go in
        one executemany: rating appends a thousand one-event batches at a time, and four
        statements per batch cost more than the rows (bench/RESULTS.md). A batch sees the
        batches before it in the call, as if each were appended in turn."""
        encoded_batches = [(stream, [encoded(e) for e in events]) for stream, events, _ in batches]
        recorded = self._recorded_ids(conn, [e.id for _, batch in encoded_batches for e in batch])
        current = self._versions(conn, list(dict.fromkeys(s for s, _ in encoded_batches)))
        recorded_at = timestamp_json(now)
        rows: list[tuple[str, str, int, str, int, str, str, bytes]] = []
        previous = _chain_head(conn)
        versions: list[int] = []
        for (stream, batch), (_, _, expected) in zip(encoded_batches, batches, strict=True):
            ids = [e.id for e in batch]
            version = current.get(stream)
            found = {i for i in ids if i in recorded}
            already = {recorded[i] for i in found}
            if already:
                # every distinct id recorded, all in this stream: a retry (as `append` was)
                if len(found) == len(set(ids)) and already == {stream}:
                    versions.append(version or 0)
                    continue
                raise EventIdConflict(
                    f"stream {stream!r}: ids {sorted(i for i in ids if i in recorded)} already"
                    " recorded elsewhere or in a different batch"
                )
            check_expected(stream, expected, version)
            position = -1 if version is None else version
            for event in batch:
                position += 1
                metadata = event.stamped_metadata(recorded_at)
                previous = chain.link(
                    previous,
                    event.id,
                    stream,
                    position,
                    event.type,
                    event.version,
                    event.data_json,
                    metadata,
                )
                rows.append(
                    (
                        event.id,
                        stream,
                        position,
                        event.type,
                        event.version,
                        event.data_json,
                        metadata,
                        previous,
                    )
                )
            current[stream] = position
            versions.append(position)
            for i in ids:
                recorded[i] = stream
        if not rows:
            return versions, 0
        conn.executemany(
            "INSERT INTO events (id, stream, stream_position, type, version, data,"
            " metadata, chain_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        head: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return versions, head

    @staticmethod
    def _recorded_ids(conn: sqlite3.Connection, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for id_, stream in conn.execute(
                f"SELECT id, stream FROM events WHERE id IN ({marks})",  # noqa: S608 - placeholders only
                chunk,
            ):
                found[id_] = stream
        return found

    @staticmethod
    def _versions(conn: sqlite3.Connection, streams: list[str]) -> dict[str, int | None]:
        """Each stream's version (None: no such stream). A subquery per stream, so that each
        is the index's min/max lookup, not a scan of the stream's entries."""
        found: dict[str, int | None] = {}
        for start in range(0, len(streams), _STREAMS_PER_QUERY):
            chunk = streams[start : start + _STREAMS_PER_QUERY]
            values = ",".join(["(?)"] * len(chunk))
            for stream, version in conn.execute(
                f"WITH wanted(name) AS (VALUES {values}) SELECT name,"  # noqa: S608 - placeholders only
                " (SELECT max(stream_position) FROM events WHERE stream = wanted.name)"
                " FROM wanted",
                chunk,
            ):
                found[stream] = None if version is None else int(version)
        return found

    # -- other tables in the ledger's file (read models, parked events) -------------------
    async def run_write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the writer connection inside BEGIN IMMEDIATE ... COMMIT, under the same
        locks as appends (one writer at a time, across processes too); rolled back if it
        raises. sqlite3 errors come out as they are, for the caller to classify."""

        def run() -> T:
            with self._write_lock, self._writers_lock():
                conn = self._writer
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

        return await asyncio.to_thread(run)

    async def run_read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the reader connection."""
        return await asyncio.to_thread(self._read, sql, params)

    # -- reads ---------------------------------------------------------------------------
    def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise EventStoreError(f"sqlite read failed: {exc}") from exc

    async def read_stream(
        self, stream: str, *, from_position: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        rows = await asyncio.to_thread(
            self._read,
            f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND stream_position >= ?"  # noqa: S608
            " ORDER BY stream_position LIMIT ?",
            (stream, from_position, -1 if limit is None else limit),
        )
        return [_row_to_event(r) for r in rows]

    async def read_streams(self, streams: Collection[str]) -> dict[str, list[RecordedEvent]]:
        names = list(dict.fromkeys(streams))
        found: dict[str, list[RecordedEvent]] = {name: [] for name in names}
        for at in range(0, len(names), _STREAMS_PER_QUERY):
            chunk = names[at : at + _STREAMS_PER_QUERY]
            rows = await asyncio.to_thread(
                self._read,
                f"SELECT {_COLUMNS} FROM events WHERE stream IN"  # noqa: S608
                f" ({', '.join('?' * len(chunk))}) ORDER BY stream, stream_position",
                chunk,
            )
            for row in rows:
                found[row[2]].append(_row_to_event(row))
        return found

    async def stream_versions(self, streams: Collection[str]) -> dict[str, int | None]:
        def versions() -> dict[str, int | None]:
            with self._read_lock:
                try:
                    return self._versions(self._reader, list(dict.fromkeys(streams)))
                except sqlite3.Error as exc:
                    raise EventStoreError(f"sqlite read failed: {exc}") from exc

        return await asyncio.to_thread(versions)

    async def stream_version(self, stream: str) -> int | None:
        rows = await asyncio.to_thread(
            self._read, "SELECT max(stream_position) FROM events WHERE stream = ?", (stream,)
        )
        value = rows[0][0] if rows else None
        return None if value is None else int(value)

    async def read_all(
        self, *, after: int = 0, limit: int = 1000, types: Collection[str] | None = None
    ) -> list[RecordedEvent]:
        if types is not None and len(types) > 1:
            # `type IN (...)` makes SQLite gather every later row of those types and sort them
            # (a temp B-tree), per batch: quadratic over a catch-up. One index range per type,
            # each already in order and cut at `limit`, merged, is linear.
            type_list = sorted(types)
            ranges = " UNION ALL ".join(
                "SELECT * FROM (SELECT global_position FROM events"
                " WHERE type = ? AND global_position > ? ORDER BY global_position LIMIT ?)"
                for _ in type_list
            )
            sql = (
                f"SELECT {_COLUMNS} FROM events WHERE global_position IN"  # noqa: S608
                f" (SELECT global_position FROM ({ranges}) ORDER BY global_position LIMIT ?)"
                " ORDER BY global_position"
            )
            params: list[Any] = [p for t in type_list for p in (t, after, limit)] + [limit]
        elif types is not None:
            sql = (
                f"SELECT {_COLUMNS} FROM events WHERE type = ? AND global_position > ?"  # noqa: S608
                " ORDER BY global_position LIMIT ?"
            )
            params = [next(iter(types)), after, limit]
        else:
            sql = f"SELECT {_COLUMNS} FROM events WHERE global_position > ? ORDER BY global_position LIMIT ?"  # noqa: S608, E501
            params = [after, limit]
        rows = await asyncio.to_thread(self._read, sql, params)
        return [_row_to_event(r) for r in rows]

    async def verify_chain(self, *, anchors: dict[int, bytes] | None = None) -> chain.ChainReport:
        walker = chain.ChainWalker(anchors)
        after = 0
        while True:
            rows = await asyncio.to_thread(
                self._read,
                f"SELECT {_COLUMNS}, chain_hash FROM events WHERE global_position > ?"  # noqa: S608
                " ORDER BY global_position LIMIT 5000",
                (after,),
            )
            if not rows or not walker.feed(rows):
                return walker.finish()
            after = rows[-1][0]

    async def head_position(self) -> int:
        rows = await asyncio.to_thread(self._read, "SELECT max(global_position) FROM events", ())
        return int(rows[0][0] or 0) if rows else 0

    async def wait_for_append(self, after: int, timeout: float) -> None:
        # Appends from this process wake us at once; another process's appends by polling.
        await self._signal.wait(after, timeout)

    # -- checkpoints ---------------------------------------------------------------------
    async def load_checkpoint(self, name: str) -> int:
        rows = await asyncio.to_thread(
            self._read, "SELECT position FROM checkpoints WHERE name = ?", (name,)
        )
        return int(rows[0][0]) if rows else 0

    async def save_checkpoint(self, name: str, position: int) -> None:
        def save() -> None:
            with self._write_lock, self._relaxed(self._writer):
                try:
                    self._writer.execute(_SAVE_CHECKPOINT, (name, position))
                except sqlite3.Error as exc:
                    raise EventStoreError(f"sqlite save checkpoint {name!r}: {exc}") from exc

        await asyncio.to_thread(save)

    async def close(self) -> None:
        with self._write_lock:
            self._writer.close()
            if self._lock_file is not None:
                self._lock_file.close()
        if self._reader is not self._writer:
            with self._read_lock:
                self._reader.close()
