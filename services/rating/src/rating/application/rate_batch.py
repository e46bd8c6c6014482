"""Use case: rate a batch of acknowledged accounting records at once.

The records are folded in memory, session by session, with the same domain functions that
rate one record at a time (`rating.domain.sessions.advance`, the same session matching and the
same subscriber rule), and everything the batch changes (sessions opened, counters recorded,
usage rated or kept unmatched) is appended in ONE `append_many`: one transaction and one commit
for the batch, however many sessions it touches, instead of three or four appends and as many
reads per record. A batch gives the ledger exactly the events that rating its records one by
one, in order, would have given (a property test holds the two equal).

Every event's id is deterministic (derived from the record), so a batch delivered again, or
retried after another worker appended to one of its sessions first, records nothing twice.
Accounting-On/Off (a NAS restarted) is rated where it stands in the batch: what came before
it is appended first, then the NAS's sessions are closed, then the rest of the batch follows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.contracts.usage_collector import AccountingRecordReceived
from ispbill_core.events import NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import (
    ANY,
    NO_STREAM,
    EventStore,
    ExpectedVersion,
    WrongExpectedVersion,
)
from ispbill_core.periods import BillingPeriod
from rating.application.rate_accounting_record import (
    ACTOR,
    MAX_CONFLICT_RETRIES,
    NAS_REBOOT_STATUSES,
    RatingSettings,
    UsernameHolding,
    close_sessions_of_rebooted_nas,
    nas_sessions_stream,
    session_index_stream,
    session_stream,
    unmatched_usage_stream,
    username_holdings,
)
from rating.domain.events import RadiusSessionOpened, SessionCountersRecorded, UsageUnmatched
from rating.domain.sessions import (
    SESSION_STATUSES,
    SessionState,
    advance,
    derived_start,
    same_session,
    session_key,
)


async def rate_accounting_batch(
    store: EventStore, settings: RatingSettings, messages: Sequence[NewEvent]
) -> list[UsageRated]:
    """Rate `messages` (AccountingRecordReceived envelopes) in order; returns the usage rated.
    Idempotent, like rating each record alone. A record that does not decode raises before
    anything is written (the caller parks it and rates the rest)."""
    records = [(m, AccountingRecordReceived.model_validate(m.data)) for m in messages]
    rated: list[UsageRated] = []
    run: list[tuple[NewEvent, AccountingRecordReceived]] = []
    for message, record in records:
        if record.status in NAS_REBOOT_STATUSES:
            rated += await _rate_run(store, settings, run)
            run = []
            await close_sessions_of_rebooted_nas(store, record)
        elif record.status in SESSION_STATUSES:
            run.append((message, record))
    rated += await _rate_run(store, settings, run)
    return rated


async def _rate_run(
    store: EventStore,
    settings: RatingSettings,
    run: Sequence[tuple[NewEvent, AccountingRecordReceived]],
) -> list[UsageRated]:
    if not run:
        return []
    for _ in range(MAX_CONFLICT_RETRIES):
        batch = _Batch(store, settings)
        try:
            for message, record in run:
                await batch.rate(message, record)
            await batch.append()
        except WrongExpectedVersion:
            continue  # another worker appended to one of these sessions first: read again
        return await batch.rate_what_was_unmatched()
    raise RuntimeError(f"a batch of {len(run)} records kept conflicting")


@dataclass
class _Index:
    """A NAS session id's sessions (it may be reused), as read plus those opened here."""

    version: int | None
    opened: list[RadiusSessionOpened]


@dataclass
class _Stream:
    """Events for one stream, appended at `expected` (the version read)."""

    expected: ExpectedVersion
    events: list[NewEvent] = field(default_factory=list)

    @staticmethod
    def name(key: str) -> str:
        """The stream of a key (an event appended on its own is keyed by stream and id)."""
        return key.partition("\n")[0]


@dataclass
class _Unmatched:
    record: AccountingRecordReceived
    message: NewEvent
    key: str
    deltas: tuple[int, int]
    traceparent: str | None


class _Batch:
    """One attempt at a run of records: reads cached for the run, appends collected."""

    def __init__(self, store: EventStore, settings: RatingSettings) -> None:
        self.store = store
        self.settings = settings
        self.indexes: dict[str, _Index] = {}
        self.sessions: dict[str, SessionState] = {}
        self.holdings: dict[str, list[UsernameHolding]] = {}
        #: stream -> events to append, in the order of first use; each kind in its own dict
        #: so that a session is listed and indexed before its counters, and those before usage
        self.listings: dict[str, _Stream] = {}
        self.index_appends: dict[str, _Stream] = {}
        self.counters: dict[str, _Stream] = {}
        self.usage: dict[str, _Stream] = {}
        self.unmatched_appends: dict[str, _Stream] = {}
        self.ids: set[uuid.UUID] = set()
        self.rated: list[UsageRated] = []
        self.unmatched: list[_Unmatched] = []

    # -- reads, once per run -------------------------------------------------------------
    async def _index(self, stream: str) -> _Index:
        index = self.indexes.get(stream)
        if index is None:
            history = await self.store.read_stream(stream)
            opened = []
            for recorded in history:
                decoded = recorded.decode()
                assert isinstance(decoded, RadiusSessionOpened)
                opened.append(decoded)
            index = self.indexes[stream] = _Index(len(history) - 1 if history else None, opened)
        return index

    async def _session(self, key: str) -> SessionState:
        state = self.sessions.get(key)
        if state is None:
            state = SessionState()
            for recorded in await self.store.read_stream(session_stream(key)):
                applied = recorded.decode()
                assert isinstance(applied, SessionCountersRecorded)
                state.apply(
                    applied.input_octets,
                    applied.output_octets,
                    applied.event_time,
                    applied.record_id,
                    (applied.input_delta, applied.output_delta),
                    applied.closed,
                )
            self.sessions[key] = state
        return state

    async def _subscriber(self, username: str | None, at: datetime) -> Any:
        """As rate_accounting_record's rule: the subscription holding `username` on that day."""
        if not username:
            return None
        holdings = self.holdings.get(username)
        if holdings is None:
            holdings = self.holdings[username] = await username_holdings(self.store, username)
        day = at.astimezone(self.settings.timezone).date()
        for holding in reversed(holdings):
            if holding.held_from <= day and (
                holding.held_until is None or day <= holding.held_until
            ):
                return holding.started
        return None

    # -- the fold ------------------------------------------------------------------------
    def _add(
        self, kind: dict[str, _Stream], stream: str, expected: ExpectedVersion, event: NewEvent
    ) -> None:
        if event.id in self.ids:
            return  # the same record twice in a batch: its events once
        self.ids.add(event.id)
        if expected is ANY:
            # Each on its own, as one record's append was: an event recorded by an earlier
            # delivery is then a no-op, not a conflict with the new events beside it.
            kind[f"{stream}\n{event.id}"] = _Stream(ANY, [event])
        else:
            kind.setdefault(stream, _Stream(expected)).events.append(event)

    async def _session_for(self, record: AccountingRecordReceived) -> str:
        stream = session_index_stream(record.nas_id, record.acct_session_id)
        index = await self._index(stream)
        for opened in reversed(index.opened):
            if same_session(opened.started_at, record):
                return opened.session_key
        started_at = derived_start(record)
        key = session_key(record.nas_id, record.acct_session_id, started_at)
        opening = RadiusSessionOpened(
            session_key=key,
            nas_id=record.nas_id,
            acct_session_id=record.acct_session_id,
            started_at=started_at,
        )
        self._add(
            self.listings,
            nas_sessions_stream(record.nas_id),
            ANY,
            new_event(
                opening,
                id=deterministic_id("nas-session-listed", key),
                occurred_at=started_at,
                actor=ACTOR,
            ),
        )
        self._add(
            self.index_appends,
            stream,
            NO_STREAM if index.version is None else index.version,
            new_event(
                opening,
                id=deterministic_id("session-opened", key),
                occurred_at=started_at,
                actor=ACTOR,
            ),
        )
        index.opened.append(opening)
        return key

    async def rate(self, message: NewEvent, record: AccountingRecordReceived) -> None:
        key = await self._session_for(record)
        state = await self._session(key)
        subscriber = await self._subscriber(record.username, record.event_time)
        traceparent = message.metadata.traceparent
        if record.record_id in state.seen:
            in_delta, out_delta = state.seen[record.record_id]
        else:
            outcome = advance(state, record)
            if outcome is None:
                return
            in_delta, out_delta = outcome.input_delta, outcome.output_delta
            counters = SessionCountersRecorded(
                session_key=key,
                record_id=record.record_id,
                status=str(record.status),
                username=record.username,
                customer_id=subscriber.customer_id if subscriber else None,
                subscription_id=subscriber.subscription_id if subscriber else None,
                event_time=record.event_time,
                input_octets=outcome.input_octets,
                output_octets=outcome.output_octets,
                input_delta=in_delta,
                output_delta=out_delta,
                closed=outcome.closes,
            )
            self._add(
                self.counters,
                session_stream(key),
                NO_STREAM if state.version is None else state.version,
                new_event(
                    counters,
                    id=deterministic_id("session-counters", record.record_id),
                    occurred_at=record.event_time,
                    causation_id=message.id,
                    traceparent=traceparent,
                    actor=ACTOR,
                ),
            )
            state.apply(
                outcome.input_octets,
                outcome.output_octets,
                record.event_time,
                record.record_id,
                (in_delta, out_delta),
                outcome.closes,
            )
        if in_delta == 0 and out_delta == 0:
            return
        if subscriber is None:
            if not record.username:
                return
            unmatched = UsageUnmatched(
                username=record.username,
                nas_id=record.nas_id,
                session_key=key,
                record_id=record.record_id,
                input_octets=in_delta,
                output_octets=out_delta,
                occurred_at=record.event_time,
            )
            self._add(
                self.unmatched_appends,
                unmatched_usage_stream(record.username),
                ANY,
                new_event(
                    unmatched,
                    id=deterministic_id("usage-unmatched", record.record_id),
                    occurred_at=record.event_time,
                    causation_id=message.id,
                    traceparent=traceparent,
                    actor=ACTOR,
                ),
            )
            self.unmatched.append(
                _Unmatched(record, message, key, (in_delta, out_delta), traceparent)
            )
            return
        self._rate_usage(
            customer_id=subscriber.customer_id,
            subscription_id=subscriber.subscription_id,
            key=key,
            record=record,
            deltas=(in_delta, out_delta),
            causation_id=message.id,
            traceparent=traceparent,
        )

    def _rate_usage(
        self,
        *,
        customer_id: str,
        subscription_id: str,
        key: str,
        record: AccountingRecordReceived,
        deltas: tuple[int, int],
        causation_id: uuid.UUID,
        traceparent: str | None,
    ) -> None:
        period = str(BillingPeriod.containing(record.event_time, self.settings.timezone))
        usage = UsageRated(
            customer_id=customer_id,
            subscription_id=subscription_id,
            period=period,
            session_key=key,
            record_id=record.record_id,
            input_octets=deltas[0],
            output_octets=deltas[1],
            occurred_at=record.event_time,
        )
        event = new_event(
            usage,
            id=deterministic_id("usage-rated", record.record_id),
            occurred_at=record.event_time,
            causation_id=causation_id,
            traceparent=traceparent,
            actor=ACTOR,
        )
        if event.id not in self.ids:
            self.rated.append(usage)
        self._add(self.usage, usage_stream(customer_id, period), ANY, event)

    # -- the writes ----------------------------------------------------------------------
    async def append(self) -> None:
        batches = [
            (_Stream.name(key), pending.events, pending.expected)
            for kind in (
                self.listings,
                self.index_appends,
                self.counters,
                self.unmatched_appends,
                self.usage,
            )
            for key, pending in kind.items()
        ]
        if batches:
            await self.store.append_many(batches)

    async def rate_what_was_unmatched(self) -> list[UsageRated]:
        """A subscription may have claimed a username since this run read it; its reactor
        (rate_unmatched_usage) may then have read the username's unmatched usage before this
        run's append. Looking again now means that one of the two rates this usage."""
        if not self.unmatched:
            return self.rated
        self.holdings = {}
        self.usage = {}
        before = len(self.rated)
        for pending in self.unmatched:
            subscriber = await self._subscriber(pending.record.username, pending.record.event_time)
            if subscriber is None:
                continue
            self._rate_usage(
                customer_id=subscriber.customer_id,
                subscription_id=subscriber.subscription_id,
                key=pending.key,
                record=pending.record,
                deltas=pending.deltas,
                causation_id=pending.message.id,
                traceparent=pending.traceparent,
            )
        if len(self.rated) > before or self.usage:
            await self.store.append_many([(s, p.events, p.expected) for s, p in self.usage.items()])
        return self.rated
