"""Read models of RADIUS sessions: the sessions open now (who is online, on which NAS, with
which address), and every session of a customer, newest first, for a dispute ("I was not
online that night"): start, stop, bytes, NAS, framed IP and why it ended.

Both fold rating's own events: `RadiusSessionOpened` (the NAS, the Acct-Session-Id and the
start; written twice per session, to the NAS's list and to the id's index, and the first one
counts) and `SessionCountersRecorded` (each record applied: counters, username, subscriber,
framed IP, terminate cause, and whether it closed the session: a Stop, or the NAS's
Accounting-On/Off). Times are kept as microseconds since the epoch (UTC), which sort and
compare as numbers in both databases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from ispbill_core.events import RecordedEvent
from ispbill_core.projections import (
    Projection,
    ReadModelDatabase,
    Statement,
    failure_reason,
    in_runs,
)
from rating.domain.events import RadiusSessionOpened, SessionCountersRecorded

#: The most sessions one page holds.
MAX_SESSIONS_PAGE = 500
#: A RADIUS User-Name to filter by: printable, no spaces, 1-253 characters (as accounts
#: accepts one).
USERNAME_PATTERN = (
    r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028-\u202f\u205f\u2066-\u2069\u3000\ufeff]+$"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    """A moment as microseconds since the epoch (UTC)."""
    return (moment - _EPOCH) // _MICROSECOND


def moment(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


@dataclass
class _Opened:
    position: int
    nas_id: str
    acct_session_id: str
    started_us: int


@dataclass
class _Patch:
    """What a batch's records change in one session, merged in order: the latest non-empty
    username, subscriber, address and cause; the latest counters (cumulative, so the latest
    is the largest); the latest event time seen; the latest close."""

    opened: _Opened | None = None
    records: int = 0
    username: str | None = None
    customer_id: str | None = None
    subscription_id: str | None = None
    framed_ip: str | None = None
    terminate_cause: str | None = None
    input_octets: int = 0
    output_octets: int = 0
    last_update_us: int = 0
    closed: bool = False
    stopped_us: int | None = None
    closed_by: str | None = None

    def add(self, counters: SessionCountersRecorded) -> None:
        self.records += 1
        self.username = counters.username or self.username
        self.customer_id = counters.customer_id or self.customer_id
        self.subscription_id = counters.subscription_id or self.subscription_id
        self.framed_ip = counters.framed_ip_address or self.framed_ip
        self.terminate_cause = counters.terminate_cause or self.terminate_cause
        self.input_octets = counters.input_octets
        self.output_octets = counters.output_octets
        self.last_update_us = max(self.last_update_us, micros(counters.event_time))
        if counters.closed:
            self.closed = True
            self.stopped_us = micros(counters.event_time)
            self.closed_by = counters.status


@dataclass
class _Batch:
    patches: dict[str, _Patch] = field(default_factory=dict)
    parked: list[tuple[RecordedEvent, str]] = field(default_factory=list)


def _merged(events: Sequence[RecordedEvent]) -> _Batch:
    """A batch's events per session, in order (a session's events are in its stream's order)."""
    batch = _Batch()
    for event in events:
        try:
            decoded = event.decode()
            if isinstance(decoded, RadiusSessionOpened):
                patch = batch.patches.setdefault(decoded.session_key, _Patch())
                if patch.opened is None:
                    patch.opened = _Opened(
                        event.global_position,
                        decoded.nas_id,
                        decoded.acct_session_id,
                        micros(decoded.started_at),
                    )
                continue
            assert isinstance(decoded, SessionCountersRecorded)
            batch.patches.setdefault(decoded.session_key, _Patch()).add(decoded)
        except Exception as exc:
            batch.parked.append((event, failure_reason(exc)))
    return batch


_SESSION_COLUMNS = (
    "session_key TEXT PRIMARY KEY, opened_position BIGINT NOT NULL, nas_id TEXT NOT NULL,"
    " acct_session_id TEXT NOT NULL, started_us BIGINT NOT NULL, username TEXT,"
    " customer_id TEXT, subscription_id TEXT, framed_ip TEXT,"
    " input_octets BIGINT NOT NULL, output_octets BIGINT NOT NULL,"
    " last_update_us BIGINT NOT NULL"
)


# --- the sessions open now -------------------------------------------------------------------

_OPEN_LIVE = (
    "INSERT INTO rm_live_sessions (session_key, opened_position, nas_id, acct_session_id,"
    " started_us, input_octets, output_octets, last_update_us) VALUES (?, ?, ?, ?, ?, 0, 0, ?)"
    " ON CONFLICT (session_key) DO NOTHING"
)
_UPDATE_LIVE = (
    "UPDATE rm_live_sessions SET username = COALESCE(?, username),"
    " customer_id = COALESCE(?, customer_id), subscription_id = COALESCE(?, subscription_id),"
    " framed_ip = COALESCE(?, framed_ip), input_octets = ?, output_octets = ?,"
    " last_update_us = CASE WHEN ? > last_update_us THEN ? ELSE last_update_us END"
    " WHERE session_key = ?"
)
_CLOSE_LIVE = "DELETE FROM rm_live_sessions WHERE session_key = ?"


class LiveSessionsProjection(Projection):
    """The sessions not closed yet: a row from the session's opening until a record closes it
    (its Stop, or the Accounting-On/Off of its NAS). A small table: what is online now."""

    name = "rating.live-sessions"
    version = 1
    tables = ("rm_live_sessions",)
    ddl = (
        f"CREATE TABLE IF NOT EXISTS rm_live_sessions ({_SESSION_COLUMNS})",
        "CREATE INDEX IF NOT EXISTS rm_live_sessions_by_position"
        " ON rm_live_sessions (opened_position)",
        "CREATE INDEX IF NOT EXISTS rm_live_sessions_by_nas"
        " ON rm_live_sessions (nas_id, opened_position)",
        "CREATE INDEX IF NOT EXISTS rm_live_sessions_by_username"
        " ON rm_live_sessions (username, opened_position)",
    )
    types = frozenset({RadiusSessionOpened.event_type, SessionCountersRecorded.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        statements, parked = self.fold([event])
        if parked:
            raise ValueError(parked[0][1])
        return statements

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """One change per session the batch touched: opened, updated, or gone (closed)."""
        batch = _merged(events)
        statements: list[Statement] = []
        for key, p in batch.patches.items():
            if p.closed:
                statements.append((_CLOSE_LIVE, (key,)))
                continue
            if p.opened is not None:
                o = p.opened
                statements.append(
                    (
                        _OPEN_LIVE,
                        (key, o.position, o.nas_id, o.acct_session_id, o.started_us, o.started_us),
                    )
                )
            if p.records:
                statements.append(
                    (
                        _UPDATE_LIVE,
                        (
                            p.username,
                            p.customer_id,
                            p.subscription_id,
                            p.framed_ip,
                            p.input_octets,
                            p.output_octets,
                            p.last_update_us,
                            p.last_update_us,
                            key,
                        ),
                    )
                )
        # sessions are independent of each other: each opening before the updates
        return in_runs(statements, first=(_OPEN_LIVE,)), batch.parked


# --- every session, for the log ---------------------------------------------------------------

_OPEN_LOGGED = (
    "INSERT INTO rm_session_log (session_key, opened_position, nas_id, acct_session_id,"
    " started_us, input_octets, output_octets, last_update_us, records, closed)"
    " VALUES (?, ?, ?, ?, ?, 0, 0, ?, 0, 0) ON CONFLICT (session_key) DO NOTHING"
)
_UPDATE_LOGGED = (
    "UPDATE rm_session_log SET username = COALESCE(?, username),"
    " customer_id = COALESCE(?, customer_id), subscription_id = COALESCE(?, subscription_id),"
    " framed_ip = COALESCE(?, framed_ip), terminate_cause = COALESCE(?, terminate_cause),"
    " input_octets = ?, output_octets = ?,"
    " last_update_us = CASE WHEN ? > last_update_us THEN ? ELSE last_update_us END,"
    " records = records + ?, closed = CASE WHEN ? = 1 THEN 1 ELSE closed END,"
    " stopped_us = COALESCE(?, stopped_us), closed_by = COALESCE(?, closed_by)"
    " WHERE session_key = ?"
)


class SessionLogProjection(Projection):
    """Every session: its start, NAS, Acct-Session-Id, username and subscriber, framed IP,
    bytes, last record, and once closed when and how (`closed_by`: the closing record's
    status, "stop" or the NAS's "accounting-on"/"accounting-off") with the NAS's terminate
    cause. Indexed by customer and by subscription, newest start first."""

    name = "rating.session-log"
    version = 1
    tables = ("rm_session_log",)
    ddl = (
        f"CREATE TABLE IF NOT EXISTS rm_session_log ({_SESSION_COLUMNS},"
        " terminate_cause TEXT, records BIGINT NOT NULL, closed INTEGER NOT NULL,"
        " stopped_us BIGINT, closed_by TEXT)",
        "CREATE INDEX IF NOT EXISTS rm_session_log_by_customer"
        " ON rm_session_log (customer_id, started_us, opened_position)",
        "CREATE INDEX IF NOT EXISTS rm_session_log_by_subscription"
        " ON rm_session_log (subscription_id, started_us, opened_position)",
    )
    types = frozenset({RadiusSessionOpened.event_type, SessionCountersRecorded.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        statements, parked = self.fold([event])
        if parked:
            raise ValueError(parked[0][1])
        return statements

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """At most two statements per session the batch touched: its row (when it opened in
        the batch) and one update with the batch's records merged."""
        batch = _merged(events)
        statements: list[Statement] = []
        for key, p in batch.patches.items():
            if p.opened is not None:
                o = p.opened
                statements.append(
                    (
                        _OPEN_LOGGED,
                        (key, o.position, o.nas_id, o.acct_session_id, o.started_us, o.started_us),
                    )
                )
            if p.records:
                statements.append(
                    (
                        _UPDATE_LOGGED,
                        (
                            p.username,
                            p.customer_id,
                            p.subscription_id,
                            p.framed_ip,
                            p.terminate_cause,
                            p.input_octets,
                            p.output_octets,
                            p.last_update_us,
                            p.last_update_us,
                            p.records,
                            int(p.closed),
                            p.stopped_us,
                            p.closed_by,
                            key,
                        ),
                    )
                )
        return in_runs(statements, first=(_OPEN_LOGGED,)), batch.parked


# --- answers ---------------------------------------------------------------------------------


class LiveSession(BaseModel):
    """A session open now: who, where, since when, how much so far, and when last heard of."""

    session_key: str
    username: str | None
    customer_id: str | None
    subscription_id: str | None
    nas_id: str
    acct_session_id: str
    framed_ip_address: str | None
    started_at: datetime
    input_octets: int
    output_octets: int
    total_octets: int
    last_update: datetime
    #: pass as `before` for the next page (newer sessions come first)
    cursor: int


class LoggedSession(BaseModel):
    """One session of a customer: start, stop (null while open), duration (to the stop, or
    to the last record while open), bytes, NAS, framed IP and why it ended."""

    session_key: str
    username: str | None
    subscription_id: str | None
    nas_id: str
    acct_session_id: str
    framed_ip_address: str | None
    started_at: datetime
    stopped_at: datetime | None
    duration_seconds: int
    input_octets: int
    output_octets: int
    total_octets: int
    last_update: datetime
    open: bool
    #: the status of the record that closed it: "stop", or "accounting-on"/"accounting-off"
    #: when the NAS restarted
    closed_by: str | None
    #: Acct-Terminate-Cause of the Stop, as the NAS sent it (User-Request, Idle-Timeout, ...)
    terminate_cause: str | None
    records: int
    #: pass as `before` for the next page (older sessions follow)
    cursor: str


@dataclass(frozen=True)
class LogCursor:
    """Where a page of the session log ended: the last session's start and position."""

    started_us: int
    position: int

    def __str__(self) -> str:
        return f"{self.started_us}.{self.position}"

    @classmethod
    def parse(cls, text: str) -> LogCursor:
        if not _LOG_CURSOR.fullmatch(text):
            raise ValueError("not a cursor of the session log")
        started, _, position = text.partition(".")
        return cls(int(started), int(position))


#: The form of a LogCursor (the API's documents state it).
LOG_CURSOR_PATTERN = r"^[0-9]{1,18}\.[0-9]{1,18}$"
_LOG_CURSOR = re.compile(LOG_CURSOR_PATTERN.strip("^$"))

_LIVE_COLUMNS = (
    "session_key, username, customer_id, subscription_id, nas_id, acct_session_id, framed_ip,"
    " started_us, input_octets, output_octets, last_update_us, opened_position"
)
_LOG_COLUMNS = (
    "session_key, username, subscription_id, nas_id, acct_session_id, framed_ip, started_us,"
    " stopped_us, input_octets, output_octets, last_update_us, closed, closed_by,"
    " terminate_cause, records, opened_position"
)


def _live(row: Sequence[Any]) -> LiveSession:
    (key, username, customer, subscription, nas, acct, ip, started, i, o, last, pos) = row
    return LiveSession(
        session_key=key,
        username=username,
        customer_id=customer,
        subscription_id=subscription,
        nas_id=nas,
        acct_session_id=acct,
        framed_ip_address=ip,
        started_at=moment(started),
        input_octets=int(i),
        output_octets=int(o),
        total_octets=int(i) + int(o),
        last_update=moment(last),
        cursor=int(pos),
    )


def _logged(row: Sequence[Any]) -> LoggedSession:
    (key, username, subscription, nas, acct, ip, started, stopped, i, o, last) = row[:11]
    closed, closed_by, cause, records, position = row[11:]
    end = int(stopped) if stopped is not None else int(last)
    return LoggedSession(
        session_key=key,
        username=username,
        subscription_id=subscription,
        nas_id=nas,
        acct_session_id=acct,
        framed_ip_address=ip,
        started_at=moment(started),
        stopped_at=None if stopped is None else moment(stopped),
        duration_seconds=max(0, (end - int(started)) // 1_000_000),
        input_octets=int(i),
        output_octets=int(o),
        total_octets=int(i) + int(o),
        last_update=moment(last),
        open=not int(closed),
        closed_by=closed_by,
        terminate_cause=cause,
        records=int(records),
        cursor=str(LogCursor(int(started), int(position))),
    )


def _check_limit(limit: int) -> None:
    # a page, and one more that tells whether another page follows
    if not 1 <= limit <= MAX_SESSIONS_PAGE + 1:
        raise ValueError(f"limit is 1 to {MAX_SESSIONS_PAGE}")


class SessionQueries:
    """Sessions as the REST API and gRPC UsageService answer them, from the projections."""

    def __init__(self, db: ReadModelDatabase, timezone: ZoneInfo) -> None:
        self._db = db
        self._timezone = timezone

    async def live(
        self,
        *,
        nas_id: str | None = None,
        username: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[LiveSession]:
        """Open sessions, the most recently opened first, on one NAS and/or of one username;
        `before` (a session's `cursor`) pages on."""
        _check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("nas_id", nas_id), ("username", username)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("opened_position < ?")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.fetch(
            f"SELECT {_LIVE_COLUMNS} FROM rm_live_sessions{clause}"  # noqa: S608 - fixed parts
            " ORDER BY opened_position DESC LIMIT ?",
            [*params, limit],
        )
        return [_live(r) for r in rows]

    def _day_start(self, day: date) -> int:
        return micros(datetime.combine(day, time(0), tzinfo=self._timezone))

    async def log(
        self,
        customer_id: str,
        *,
        subscription_id: str | None = None,
        first: date | None = None,
        last: date | None = None,
        limit: int = 100,
        before: LogCursor | None = None,
    ) -> list[LoggedSession]:
        """A customer's sessions (of one subscription, when given) that started from `first`
        to `last` (local days in the ISP's time zone, both included), newest start first;
        `before` (a session's `cursor`) pages on."""
        _check_limit(limit)
        if first is not None and last is not None and last < first:
            raise ValueError("the range ends before it starts")
        where = ["customer_id = ?"]
        params: list[Any] = [customer_id]
        if subscription_id is not None:
            where.append("subscription_id = ?")
            params.append(subscription_id)
        if first is not None:
            where.append("started_us >= ?")
            params.append(self._day_start(first))
        if last is not None:
            where.append("started_us < ?")
            params.append(self._day_start(last + timedelta(days=1)))
        if before is not None:
            where.append("(started_us < ? OR (started_us = ? AND opened_position < ?))")
            params += [before.started_us, before.started_us, before.position]
        rows = await self._db.fetch(
            f"SELECT {_LOG_COLUMNS} FROM rm_session_log"  # noqa: S608 - fixed parts
            f" WHERE {' AND '.join(where)}"
            " ORDER BY started_us DESC, opened_position DESC LIMIT ?",
            [*params, limit],
        )
        return [_logged(r) for r in rows]
