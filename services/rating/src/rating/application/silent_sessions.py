"""Use cases: watch sessions for silence as their records are rated, and close the silent ones.

Each NAS session id (NAS, Acct-Session-Id) that records arrive for has one durable timer
(`rating.silent-session`), due `silent_after` past the newest record heard. A batch of records
moves its sessions' timers in ONE write before the batch is rated (`watch_for_silence`: an
upsert of every timer the batch touches, and the removal of those whose session stopped),
never a timer row per record. Before, not after: a crash between the two then leaves a
deadline whose records are delivered again, never records without a deadline.

When a timer fires (`close_silent_sessions`), every session of its id that is still open and
has recorded nothing newer than the records the deadline was set for is closed at its last
totals. A session that has (its deadline was moved while the timer fired, or a redelivered
older batch set an early one) is watched again instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from ispbill_core.contracts.usage_collector import AccountingRecordReceived
from ispbill_core.events import NewEvent, new_event
from ispbill_core.eventstore import CheckpointStore, EventStore
from ispbill_core.timers import DueTimer, FireAgain, Timer, Timers
from rating.application.rate_accounting_record import (
    ACTOR,
    fold_session,
    session_index_stream,
    session_stream,
)
from rating.domain.events import RadiusSessionOpened
from rating.domain.silent_sessions import (
    Sighting,
    SilentSessionSettings,
    judge_silence,
    silence_watches,
    silent_close_event_id,
)

log = logging.getLogger(__name__)

#: The timer kind rating registers.
SILENT_SESSION_TIMER = "rating.silent-session"

#: How long a deadline waits while records received before it are still waiting to be rated.
BACKLOG_RECHECK = timedelta(seconds=10)

#: Whether a record received before the given time is still waiting to be rated.
Backlog = Callable[[datetime], Awaitable[bool]]


def silence_timer_id(nas_id: str, acct_session_id: str) -> str:
    """One timer per NAS session id (a NAS id has no "/", so the id is unambiguous)."""
    return f"silent-session/{nas_id}/{acct_session_id}"


def sightings_of(messages: Sequence[NewEvent]) -> list[Sighting]:
    """The fields silence needs, read from the envelopes' data without validating every record
    a second time (rating does); a record that lacks them is rating's to park, not ours."""
    out = []
    for message in messages:
        data: dict[str, Any] = message.data
        try:
            out.append(
                Sighting(
                    data["nas_id"],
                    data["acct_session_id"],
                    data["status"],
                    datetime.fromisoformat(data["received_at"]),
                    datetime.fromisoformat(data["event_time"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


async def watch_for_silence(
    timers: Timers, settings: SilentSessionSettings, messages: Sequence[NewEvent]
) -> None:
    """Move the silence deadlines of the sessions `messages` (accounting records) are about,
    in one write; call it before rating them."""
    if not settings.enabled or not messages:
        return
    watches, stopped = silence_watches(sightings_of(messages), settings)
    await timers.schedule_many(
        [
            Timer(
                silence_timer_id(w.nas_id, w.acct_session_id),
                SILENT_SESSION_TIMER,
                w.due_at,
                {
                    "nas_id": w.nas_id,
                    "acct_session_id": w.acct_session_id,
                    "heard_until": w.heard_until.isoformat(),
                },
            )
            for w in watches
        ],
        cancel=[silence_timer_id(nas, acct) for nas, acct in stopped],
    )


async def close_silent_sessions(
    store: EventStore,
    settings: SilentSessionSettings,
    timer: DueTimer,
    now: datetime,
    *,
    backlog: Backlog | None = None,
) -> datetime | FireAgain | None:
    """The silence deadline of one NAS session id, at `now`: close its silent sessions at their
    last totals. Returns when to look again, or None. A session heard from since is watched
    again `silent_after` from now (when its record was heard is not in the ledger: later rather
    than early), for records up to its newest; records from before the deadline still waiting
    to be rated hold it back a little. Idempotent: the closing entry's id derives from the
    session and its last record, and it is appended at the version read."""
    # Held back, a timer fires again later: the backlog is asked about the deadline it first
    # had, not about its new due time (asking "anything queued from before now?" would hold
    # it back for as long as rating runs a little behind).
    deadline = timer.payload.get("deadline")
    deadline_at = datetime.fromisoformat(str(deadline)) if deadline else timer.due_at
    if backlog is not None and await backlog(deadline_at):
        return FireAgain(
            now + BACKLOG_RECHECK, {**timer.payload, "deadline": deadline_at.isoformat()}
        )
    nas_id = str(timer.payload["nas_id"])
    acct_session_id = str(timer.payload["acct_session_id"])
    heard_until = datetime.fromisoformat(str(timer.payload["heard_until"]))
    keys = []
    for recorded in await store.read_stream(session_index_stream(nas_id, acct_session_id)):
        opened = recorded.decode()
        assert isinstance(opened, RadiusSessionOpened)
        keys.append(opened.session_key)
    histories = await store.read_streams([session_stream(k) for k in keys])
    newest: datetime | None = None
    for key in keys:
        state, last = fold_session(histories[session_stream(key)])
        silence = judge_silence(key, state, last, heard_until=heard_until)
        if silence.heard_since and state.last_event_time is not None:
            newest = max(newest or state.last_event_time, state.last_event_time)
        if silence.closing is None or last is None:
            continue
        assert state.version is not None
        await store.append(
            session_stream(key),
            [
                new_event(
                    silence.closing,
                    id=silent_close_event_id(key, last.record_id),
                    occurred_at=now,
                    actor=ACTOR,
                )
            ],
            state.version,  # a record rated meanwhile: WrongExpectedVersion, fired again
        )
        log.info(
            "session %s silent since %s: closed at its last totals (%d in, %d out)",
            key,
            silence.closing.event_time,
            silence.closing.input_octets,
            silence.closing.output_octets,
        )
    if newest is None:
        return None
    payload = {k: v for k, v in timer.payload.items() if k != "deadline"}
    return FireAgain(now + settings.silent_after, {**payload, "heard_until": newest.isoformat()})


def ledger_backlog(store: EventStore, checkpoints: CheckpointStore, consumer: str) -> Backlog:
    """The embedded runtime's backlog: the accounting records in the ledger past the rating
    subscriber's checkpoint (`consumer`). A deadline waits while the oldest of them was
    received before it: a record of its session may be among them."""

    async def behind(at: datetime) -> bool:
        position = await checkpoints.load_checkpoint(consumer)
        waiting = await store.read_all(
            after=position, limit=1, types={AccountingRecordReceived.event_type}
        )
        if not waiting:
            return False
        received = waiting[0].data.get("received_at")
        return received is None or datetime.fromisoformat(str(received)) < at

    return behind
