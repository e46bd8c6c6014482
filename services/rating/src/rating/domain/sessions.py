"""The session fold: cumulative RADIUS counters in, usage deltas out. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus

#: A record whose derived start (event time minus session time) lies this close to a known
#: session's start belongs to that session; NAS clocks and delay times jitter by a second or two.
SESSION_START_TOLERANCE = timedelta(seconds=5)

SESSION_STATUSES = {AcctStatus.START, AcctStatus.INTERIM_UPDATE, AcctStatus.STOP}


def derived_start(record: AccountingRecordReceived) -> datetime:
    return record.event_time - timedelta(seconds=record.session_time or 0)


def session_key(nas_id: str, acct_session_id: str, started_at: datetime) -> str:
    return f"{nas_id}-{acct_session_id}-{int(started_at.timestamp())}"


def same_session(started_at: datetime, record: AccountingRecordReceived) -> bool:
    return abs(derived_start(record) - started_at) <= SESSION_START_TOLERANCE


@dataclass
class SessionState:
    """What the ledger knows of one session, folded from its SessionCountersRecorded events."""

    version: int | None = None
    input_octets: int = 0
    output_octets: int = 0
    last_event_time: datetime | None = None
    closed: bool = False
    seen: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    #: per record applied, where its delta's time span began: the session's last event time
    #: before it (None for the session's first record, whose span begins at the session's
    #: start). A record redelivered is split into the same buckets as the first time.
    span_starts: dict[uuid.UUID, datetime | None] = field(default_factory=dict)

    def apply(
        self,
        recorded_input: int,
        recorded_output: int,
        event_time: datetime,
        record_id: uuid.UUID,
        deltas: tuple[int, int],
        closed: bool,
    ) -> None:
        self.version = 0 if self.version is None else self.version + 1
        self.span_starts[record_id] = self.last_event_time
        self.input_octets = max(self.input_octets, recorded_input)
        self.output_octets = max(self.output_octets, recorded_output)
        if self.last_event_time is None or event_time > self.last_event_time:
            self.last_event_time = event_time
        self.closed = self.closed or closed
        self.seen[record_id] = deltas

    def copy(self) -> SessionState:
        """A copy whose record maps can change without changing this one."""
        return replace(self, seen=dict(self.seen), span_starts=dict(self.span_starts))


@dataclass(frozen=True)
class CounterAdvance:
    """The outcome of applying a record: new cumulative counters and the usage since last."""

    input_octets: int
    output_octets: int
    input_delta: int
    output_delta: int
    closes: bool


def advance(state: SessionState, record: AccountingRecordReceived) -> CounterAdvance | None:
    """Apply a Start / Interim-Update / Stop to a session.

    Returns None when the record changes nothing: a duplicate, or an interim older than one
    already applied. Counters are cumulative, so an older record never subtracts usage and
    a duplicate never adds it twice.
    """
    if record.record_id in state.seen:
        return None
    new_in = record.input_octets or 0
    new_out = record.output_octets or 0
    closes = record.status is AcctStatus.STOP
    older = state.last_event_time is not None and record.event_time < state.last_event_time
    if older and not closes:
        return None
    in_delta = max(0, new_in - state.input_octets)
    out_delta = max(0, new_out - state.output_octets)
    return CounterAdvance(
        input_octets=max(new_in, state.input_octets),
        output_octets=max(new_out, state.output_octets),
        input_delta=in_delta,
        output_delta=out_delta,
        closes=closes,
    )
