"""Silent sessions: when a session that sends no more records is over, and how it is closed. Pure.

A NAS sends an Interim-Update every interim interval while a session lasts; one that goes
quiet (the NAS lost power, its Stop was lost, the subscriber's line dropped without the NAS
noticing) would otherwise stay open for ever. A session from which nothing was heard for
`silent_after` (a number of interim intervals) is closed at its last totals: a zero-usage
`SessionCountersRecorded` with `closed=True` and the status `silent-timeout`, as an
Accounting-On closes a rebooted NAS's sessions. A record that comes after that still counts
its bytes (counters are cumulative: the delta is taken against the last totals).

Accounting records do not carry the interval: RADIUS gives it to the NAS in the Access-Accept
(Acct-Interim-Interval, RFC 2869), from the server that authenticates, which is not ispbill.
The ISP sets the interval it gives its NASes (`interim_interval`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from ispbill_core.contracts.usage_collector import AcctStatus
from ispbill_core.events import deterministic_id
from rating.domain.events import SessionCountersRecorded
from rating.domain.sessions import SessionState

SILENT_TIMEOUT = "silent-timeout"

#: What the ISP's RADIUS server gives its NASes when it is not told otherwise (five minutes is
#: the common choice; FreeRADIUS' examples use 600 s, MikroTik's PPP profiles 0: set it).
DEFAULT_INTERIM_INTERVAL = timedelta(seconds=300)
DEFAULT_SILENT_INTERVALS = 3


@dataclass(frozen=True)
class SilentSessionSettings:
    """`intervals` interim intervals without a record make a session silent; 0 never."""

    interim_interval: timedelta = DEFAULT_INTERIM_INTERVAL
    intervals: int = DEFAULT_SILENT_INTERVALS

    def __post_init__(self) -> None:
        if self.intervals < 0:
            raise ValueError("silent session intervals cannot be negative")
        if self.interim_interval <= timedelta(0):
            raise ValueError("the interim interval must be positive")

    @property
    def enabled(self) -> bool:
        return self.intervals > 0

    @property
    def silent_after(self) -> timedelta:
        return self.interim_interval * self.intervals


class Sighting(NamedTuple):
    """One accounting record, as far as silence is concerned."""

    nas_id: str
    acct_session_id: str
    status: str
    #: when ispbill heard it (the collector's clock: a NAS's clock may be off by hours)
    received_at: datetime
    #: the record's own event time, as its session keeps it
    event_time: datetime


@dataclass(frozen=True)
class SilenceWatch:
    """A NAS session id to watch: silent at `due_at` unless heard from again; `heard_until` is
    the event time of the newest record seen, to tell at the deadline whether a newer one was
    rated since (which would have moved the deadline, had its watch been written)."""

    nas_id: str
    acct_session_id: str
    due_at: datetime
    heard_until: datetime


_WATCHED = frozenset({AcctStatus.START, AcctStatus.INTERIM_UPDATE, AcctStatus.STOP})


def silence_watches(
    sightings: Iterable[Sighting], settings: SilentSessionSettings
) -> tuple[list[SilenceWatch], list[tuple[str, str]]]:
    """What a batch of records means for silence, per NAS session id: a deadline to (re)set
    `silent_after` past the newest record heard, or, when the batch's last record of the id is
    a Stop, no deadline any more (the session closed itself). Returns (watches, ids to stop
    watching). Records of other statuses (Accounting-On/Off) are not sessions' and ignored."""
    heard: dict[tuple[str, str], tuple[datetime, datetime, bool]] = {}
    for s in sightings:
        if s.status not in _WATCHED:
            continue
        key = (s.nas_id, s.acct_session_id)
        before = heard.get(key)
        if before is None:
            heard[key] = (s.received_at, s.event_time, s.status == AcctStatus.STOP)
        else:
            heard[key] = (
                max(before[0], s.received_at),
                max(before[1], s.event_time),
                s.status == AcctStatus.STOP,
            )
    silent_after = settings.silent_after
    watches = []
    stopped = []
    for (nas_id, acct_session_id), (received, event_time, stop) in heard.items():
        if stop:
            stopped.append((nas_id, acct_session_id))
        else:
            watches.append(
                SilenceWatch(nas_id, acct_session_id, received + silent_after, event_time)
            )
    return watches, stopped


class Silence(NamedTuple):
    """A session's state at its silence deadline."""

    #: the zero-usage closing entry to append, when the session is silent
    closing: SessionCountersRecorded | None
    #: a record newer than the deadline's was rated since: not silent, watch it again
    heard_since: bool


def judge_silence(
    key: str,
    state: SessionState,
    last: SessionCountersRecorded | None,
    *,
    heard_until: datetime,
) -> Silence:
    """At the deadline of a watch whose newest record had event time `heard_until`: the
    session's closing entry when it is silent (open, nothing newer recorded), at its last
    totals; nothing for a session that is closed already, or that does not exist yet (its
    records not rated yet: the deadline is moved when they are)."""
    if last is None or state.closed:
        return Silence(None, False)
    if state.last_event_time is not None and state.last_event_time > heard_until:
        return Silence(None, True)
    closing = SessionCountersRecorded(
        session_key=key,
        record_id=silent_close_record_id(key, last.record_id),
        status=SILENT_TIMEOUT,
        username=last.username,
        customer_id=last.customer_id,
        subscription_id=last.subscription_id,
        # the last totals' time: no usage is known after it, and a later record is not older
        event_time=state.last_event_time or last.event_time,
        input_octets=state.input_octets,
        output_octets=state.output_octets,
        input_delta=0,
        output_delta=0,
        closed=True,
    )
    return Silence(closing, False)


def silent_close_record_id(key: str, last_record_id: uuid.UUID) -> uuid.UUID:
    """The closing entry's record id: one per session and last record heard."""
    return deterministic_id("silent-timeout", key, last_record_id)


def silent_close_event_id(key: str, last_record_id: uuid.UUID) -> uuid.UUID:
    """The closing event's id: the same session silent after the same record closes once."""
    return deterministic_id("session-closed-silent", key, last_record_id)
