"""Read models: projections of the ledger into tables, and the database port they are kept in.

A projection is pure: `apply(event)` returns SQL statements (portable between SQLite and
PostgreSQL, `?` placeholders) and never reads. The runner (`projector.Projector`) executes the
statements of a batch of events and the projection's checkpoint in ONE transaction of a
`ReadModelDatabase`, so a crash anywhere replays nothing twice and loses nothing. Tables live in
the ledger's own database (SQLite embedded, PostgreSQL distributed; with a KurrentDB ledger, in
PostgreSQL). Projections serve reads, never invariants (docs/adr/0018-projections.md).
"""

from __future__ import annotations

import abc
import functools
import json
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from ispbill_core.events import RecordedEvent

#: One SQL statement and its parameters (`?` placeholders; the PostgreSQL adapter renumbers).
Statement = tuple[str, tuple[Any, ...]]


class Projection(abc.ABC):
    """A read model: the tables it owns, the event types it folds, and how.

    Bump `version` whenever its tables or its folding change: the runner then drops the tables
    and rebuilds them from position 0 at start-up.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    #: the tables this projection owns (dropped by a rebuild), created by `ddl`
    tables: ClassVar[tuple[str, ...]]
    #: CREATE TABLE / CREATE INDEX statements, portable (TEXT, BIGINT, INTEGER only)
    ddl: ClassVar[tuple[str, ...]]
    #: the event types `apply` folds; others are never read for it
    types: ClassVar[frozenset[str]]
    #: PostgreSQL only, run after `ddl` like its indexes: what SQLite has no equivalent of (a
    #: trigram index). Each runs in a savepoint; one that fails (an extension the role may not
    #: create) is logged and skipped, and its queries are slower, never wrong. `{ext:NAME}` is
    #: replaced by the schema extension NAME lives in (for its operator classes).
    ddl_postgresql: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        """The statements that fold `event` in. Pure; raising parks the event."""

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """A batch's statements, and the events that could not be folded with the reason.
        Override to fold a batch more cheaply than event by event (fewer, grouped statements);
        the result must equal folding the events one at a time, in order."""
        statements: list[Statement] = []
        parked: list[tuple[RecordedEvent, str]] = []
        for event in events:
            try:
                statements.extend(self.apply(event))
            except Exception as exc:
                parked.append((event, failure_reason(exc)))
        return statements, parked


class ParkedStatus:
    PARKED = "parked"
    RETRY = "retry"
    DISCARDED = "discarded"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class ParkedEvent:
    """An event a consumer could not handle (not a transient failure): kept with its reason
    until someone retries or discards it. The consumer went on with the next event."""

    id: int
    consumer: str
    event_id: str
    global_position: int
    stream: str
    type: str
    reason: str
    status: str
    attempts: int
    parked_at: datetime
    updated_at: datetime
    #: the whole envelope as JSON: a Kafka message that is not in the ledger can be retried too
    envelope: str = field(repr=False, default="")

    def event(self) -> RecordedEvent:
        return RecordedEvent.model_validate_json(self.envelope)

    def as_dict(self, *, with_envelope: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "consumer": self.consumer,
            "event_id": self.event_id,
            "global_position": self.global_position,
            "stream": self.stream,
            "type": self.type,
            "reason": self.reason,
            "status": self.status,
            "attempts": self.attempts,
            "parked_at": self.parked_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
        if with_envelope:
            out["event"] = json.loads(self.envelope) if self.envelope else None
        return out


@dataclass(frozen=True)
class ProjectionState:
    name: str
    version: int
    position: int
    updated_at: datetime | None


PARKED_COLUMNS = (
    "id, consumer, event_id, global_position, stream, type, reason, status, attempts,"
    " parked_at, updated_at, envelope"
)


def parked_from_row(row: Sequence[Any]) -> ParkedEvent:
    return ParkedEvent(
        id=int(row[0]),
        consumer=row[1],
        event_id=row[2],
        global_position=int(row[3]),
        stream=row[4],
        type=row[5],
        reason=row[6],
        status=row[7],
        attempts=int(row[8]),
        parked_at=datetime.fromisoformat(row[9]),
        updated_at=datetime.fromisoformat(row[10]),
        envelope=row[11],
    )


@dataclass(frozen=True)
class Commit:
    """One projection's share of a transaction: its statements, the events it parked, and its
    checkpoint moved from `from_position` to `to_position`."""

    projection: Projection
    statements: Sequence[Statement]
    from_position: int
    to_position: int
    parked: Sequence[tuple[RecordedEvent, str]] = ()


def is_index(ddl: str) -> bool:
    """A secondary index (made after the rows when a projection is rebuilt in bulk)."""
    return ddl.lstrip().upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX"))


class StaleCheckpoint(Exception):
    """Another runner moved the projection's checkpoint first: reload and go on from there."""


class ReadModelDatabase(abc.ABC):
    """Where projections, their checkpoints and parked events live."""

    dialect: ClassVar[str]

    @abc.abstractmethod
    async def prepare(self, projection: Projection) -> int:
        """Create the projection's tables if missing; when the stored version differs from the
        projection's, drop and recreate them at position 0. Returns the position to go on from."""

    async def commit(
        self,
        projection: Projection,
        statements: Sequence[Statement],
        *,
        from_position: int,
        to_position: int,
        parked: Sequence[tuple[RecordedEvent, str]] = (),
    ) -> None:
        """In one transaction: the statements, the events parked (consumer = projection name)
        and the checkpoint moved from `from_position` to `to_position`. StaleCheckpoint when
        the stored checkpoint is not `from_position` (another runner got there first)."""
        await self.commit_many([Commit(projection, statements, from_position, to_position, parked)])

    @abc.abstractmethod
    async def commit_many(self, commits: Sequence[Commit]) -> None:
        """Several projections' commits in ONE transaction, all or none (a rebuild that reads
        the ledger once for every projection). StaleCheckpoint as for `commit`."""

    @abc.abstractmethod
    async def reset(self, projection: Projection, *, indexes: bool = True) -> None:
        """Drop the projection's tables, recreate them empty, checkpoint 0. `indexes=False`
        leaves its secondary indexes out until `create_indexes` (a bulk rebuild)."""

    @abc.abstractmethod
    async def create_indexes(self, projection: Projection) -> None:
        """The projection's secondary indexes, where missing."""

    async def states(self) -> list[ProjectionState]:
        """Every projection ever prepared here."""
        await self._ready()
        rows = await self.fetch(
            "SELECT name, version, position, updated_at FROM rm_projections ORDER BY name"
        )
        return [
            ProjectionState(r[0], int(r[1]), int(r[2]), datetime.fromisoformat(r[3])) for r in rows
        ]

    async def _ready(self) -> None:  # noqa: B027 - adapters whose tables exist once open
        """Make sure the shared tables exist before a read (SQLite creates them lazily)."""

    @abc.abstractmethod
    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (portable SQL, `?` placeholders)."""

    # -- parked events (consumers other than projections use these too) -------------------
    @abc.abstractmethod
    async def park(self, consumer: str, event: RecordedEvent, reason: str) -> int:
        """Keep `event` parked for `consumer`; parking it again for the same consumer updates
        the reason and counts an attempt. Returns its parked id."""

    async def parked(
        self, *, consumer: str | None = None, status: str | None = ParkedStatus.PARKED
    ) -> list[ParkedEvent]:
        """Parked events, oldest first; `status` None lists every status."""
        await self._ready()
        where, params = [], []
        if consumer is not None:
            where.append("consumer = ?")
            params.append(consumer)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self.fetch(
            f"SELECT {PARKED_COLUMNS} FROM parked_events{clause} ORDER BY id",  # noqa: S608
            params,
        )
        return [parked_from_row(r) for r in rows]

    async def parked_event(self, parked_id: int) -> ParkedEvent | None:
        await self._ready()
        rows = await self.fetch(
            f"SELECT {PARKED_COLUMNS} FROM parked_events WHERE id = ?",  # noqa: S608
            (parked_id,),
        )
        return parked_from_row(rows[0]) if rows else None

    @abc.abstractmethod
    async def set_parked_status(
        self, parked_id: int, status: str, reason: str | None = None
    ) -> bool:
        """Mark a parked event retry / discarded / resolved; False when there is no such id."""

    async def close(self) -> None:  # noqa: B027 - adapters without resources need not override
        pass


def failure_reason(exc: BaseException) -> str:
    """What a parked event's reason says: the error and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = "; ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in frames)
    return f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")


@functools.lru_cache(maxsize=1024)
def to_pg(sql: str) -> str:
    """`?` placeholders renumbered as PostgreSQL's $1, $2... (no `?` appears in our literals)."""
    parts = sql.split("?")
    if len(parts) == 1:
        return sql
    out = [parts[0]]
    for n, part in enumerate(parts[1:], start=1):
        out.append(f"${n}{part}")
    return "".join(out)


def grouped(statements: Sequence[Statement]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Runs of the same SQL, in order, with their parameter rows: one executemany per run
    (pipelined by asyncpg: one round trip for a run instead of one per statement)."""
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for sql, params in statements:
        if runs and runs[-1][0] == sql:
            runs[-1][1].append(params)
        else:
            runs.append((sql, [params]))
    return runs


def in_runs(
    statements: Sequence[Statement], *, first: Sequence[str] = (), group_rest: bool = True
) -> list[Statement]:
    """A batch's statements reordered into runs of one SQL each (one executemany per run
    instead of one round trip per statement), for a projection whose fold allows it: the
    statements whose SQL is in `first` go first, in that order of SQL; then the rest, grouped
    by SQL too when `group_rest` (statements of different SQL commute), else as they came.
    Within one SQL the statements keep their order."""
    firsts: dict[str, list[Statement]] = {sql: [] for sql in first}
    rest: dict[str, list[Statement]] = {}
    in_order: list[Statement] = []
    for statement in statements:
        bucket = firsts.get(statement[0])
        if bucket is not None:
            bucket.append(statement)
        elif group_rest:
            rest.setdefault(statement[0], []).append(statement)
        else:
            in_order.append(statement)
    out = [s for run in firsts.values() for s in run]
    return out + ([s for run in rest.values() for s in run] if group_rest else in_order)


def short(text: str, limit: int = 2000) -> str:
    """A reason kept short: a poison event's data may be megabytes."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
