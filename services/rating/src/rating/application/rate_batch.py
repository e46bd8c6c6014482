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

Reads are few too: the streams a batch needs (its sessions' indexes, the sessions, the
usernames' claims and subscriptions) are read in a handful of `read_streams` queries, and a
`RatingCache` keeps them across batches: a session's next interim finds its state in memory.
The cache holds only what this worker read or committed; a conflict (another writer appended
to a session) empties it and the batch is read again. A username's holdings are kept for
`RatingCache.holdings_ttl` seconds; usage a stale entry would leave unmatched is looked up
again, uncached, after the append, as rating one record does.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from opentelemetry import trace

from ispbill_core.contracts.accounts import (
    PlanDefined,
    PlanTerms,
    PlanVersionPublished,
    RadiusUsernameAssigned,
    RadiusUsernameChanged,
    RadiusUsernameReleased,
    SubscriptionHoldPlaced,
    SubscriptionPlanChanged,
    SubscriptionResumed,
    SubscriptionStarted,
    SubscriptionSuspended,
    SubscriptionTerminated,
    plan_stream,
    radius_user_stream,
)
from ispbill_core.contracts.invoicing import InvoiceIssued, invoice_stream
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import AccountingRecordReceived
from ispbill_core.events import (
    EncodedEvent,
    NewEvent,
    RecordedEvent,
    deterministic_id,
    encoded_event,
)
from ispbill_core.eventstore import (
    ANY,
    NO_STREAM,
    EventIdConflict,
    EventStore,
    ExpectedVersion,
    WrongExpectedVersion,
)
from ispbill_core.telemetry import context_from_traceparent, current_traceparent
from rating.application.rate_accounting_record import (
    ACTOR,
    MAX_CONFLICT_RETRIES,
    NAS_REBOOT_STATUSES,
    RatingSettings,
    Tariffs,
    UsernameHolding,
    claimed_streams,
    close_sessions_of_rebooted_nas,
    fold_session,
    holdings_from,
    nas_sessions_stream,
    plan_ids_of,
    plan_versions_of,
    service_history_of,
    session_index_stream,
    session_stream,
    unmatched_usage_stream,
    usage_pieces,
)
from rating.application.usage_sources import billed_or_measured
from rating.domain.events import (
    RadiusSessionOpened,
    SessionCountersRecorded,
    UsageMeasured,
    UsageUnmatched,
)
from rating.domain.sessions import (
    SESSION_STATUSES,
    SessionState,
    advance,
    derived_start,
    same_session,
    session_key,
)

tracer = trace.get_tracer("ispbill.rating")


#: What can change a cached username's holdings, a subscription's history, a plan or whether a
#: period is invoiced: a cache that follows these in the ledger drops exactly what they touch.
WATCHED_TYPES = frozenset(
    {
        RadiusUsernameAssigned.event_type,
        RadiusUsernameReleased.event_type,
        RadiusUsernameChanged.event_type,
        SubscriptionStarted.event_type,
        SubscriptionPlanChanged.event_type,
        SubscriptionSuspended.event_type,
        SubscriptionResumed.event_type,
        SubscriptionHoldPlaced.event_type,
        SubscriptionTerminated.event_type,
        PlanDefined.event_type,
        PlanVersionPublished.event_type,
        InvoiceIssued.event_type,
    }
)
_FOLLOW_PAGE = 1000


class RatingCache:
    """What a rating worker keeps between batches: the session indexes and session states it
    read or committed (the least recently used dropped beyond `max_sessions`), each username's
    holdings, each subscription's history and plans, and which periods are invoiced.

    Before each batch the cache reads the ledger's changes since the last batch
    (`WATCHED_TYPES`, an indexed read by type) and drops what they touch: a username claimed,
    released or changed, a subscription's lifecycle, a plan's versions. So a username given to
    another subscription is rated to it from the next batch on. `holdings_ttl` (seconds) is a
    safety net on top; 0 caches nothing across batches."""

    def __init__(self, *, max_sessions: int = 50_000, holdings_ttl: float = 600.0) -> None:
        self.max_sessions = max_sessions
        self.holdings_ttl = holdings_ttl
        #: the ledger position up to which changes were followed (None: not started)
        self.watermark: int | None = None
        self.indexes: OrderedDict[str, _Index] = OrderedDict()
        self.sessions: OrderedDict[str, SessionState] = OrderedDict()
        self.holdings: dict[str, tuple[float, list[UsernameHolding]]] = {}
        #: subscription id -> (read at, its history and plans), kept as long as holdings
        self.tariffs: dict[str, tuple[float, Tariffs | None]] = {}
        self.plans: dict[str, tuple[float, list[PlanTerms]]] = {}
        #: (customer, period) -> True once invoiced (for good), else when it was seen not to be
        self.invoiced: dict[tuple[str, str], bool | float] = {}

    async def follow_changes(self, store: EventStore) -> set[str] | None:
        """Drop what the changes recorded since the last call touch (see the class); return
        the usernames they touched (None: this cache follows nothing, anything may have)."""
        if self.holdings_ttl <= 0:
            return None
        touched: set[str] = set()
        if self.watermark is None:
            self.watermark = await store.head_position()  # everything read later is newer
            return touched
        while True:
            changes = await store.read_all(
                after=self.watermark, limit=_FOLLOW_PAGE, types=WATCHED_TYPES
            )
            for change in changes:
                self._forget(change, touched)
            if changes:
                self.watermark = changes[-1].global_position
            if len(changes) < _FOLLOW_PAGE:
                return touched

    def _forget(self, change: RecordedEvent, touched: set[str]) -> None:
        data = change.data
        if change.type == InvoiceIssued.event_type:
            self.invoiced[(str(data.get("customer_id")), str(data.get("period")))] = True
            return
        if change.type in (PlanDefined.event_type, PlanVersionPublished.event_type):
            self.plans.pop(str(data.get("plan_id")), None)
            self.tariffs.clear()  # each holds its plans' versions
            return
        for field_name in ("username", "radius_username", "old_username", "new_username"):
            if field_name in data:
                self.holdings.pop(str(data[field_name]), None)
                touched.add(str(data[field_name]))
        if "subscription_id" in data:
            self.tariffs.pop(str(data["subscription_id"]), None)

    def clear(self) -> None:
        self.indexes.clear()
        self.sessions.clear()
        self.holdings.clear()
        self.tariffs.clear()
        self.plans.clear()
        self.invoiced.clear()

    def keep(self, indexes: dict[str, _Index], sessions: dict[str, SessionState]) -> None:
        """A committed batch's indexes and sessions (closed sessions are not kept: a late
        record of one reads it again)."""
        for stream, index in indexes.items():
            self.indexes[stream] = index
            self.indexes.move_to_end(stream)
        for key, state in sessions.items():
            if state.closed:
                self.sessions.pop(key, None)
                continue
            self.sessions[key] = state
            self.sessions.move_to_end(key)
        for table in (self.indexes, self.sessions):
            while len(table) > self.max_sessions:
                table.popitem(last=False)
        if len(self.holdings) > self.max_sessions:
            self.holdings.clear()
        if len(self.invoiced) > self.max_sessions:
            self.invoiced.clear()
        if len(self.tariffs) > self.max_sessions:
            self.tariffs.clear()
            self.plans.clear()


async def invoiced_periods(
    store: EventStore, pairs: set[tuple[str, str]], cache: RatingCache | None = None
) -> set[tuple[str, str]]:
    """Which (customer, period) pairs have an invoice: their usage rated now is late. An
    invoiced period stays invoiced; one that was not is looked at again after the cache's
    `holdings_ttl`. The mark is for people (read models, the clerk); what invoicing relies on
    is the usage stream position each invoice records (`InvoiceIssued.usage_through`), which
    no race between a bill run and rating can blur."""
    now = time.monotonic()
    found: set[tuple[str, str]] = set()
    missing = []
    for pair in pairs:
        known = cache.invoiced.get(pair) if cache is not None else None
        if known is True:
            found.add(pair)
        elif known is None or cache is None or now - known > cache.holdings_ttl:
            missing.append(pair)
    if missing:
        streams = await store.read_streams([invoice_stream(c, p) for c, p in missing])
        for pair in missing:
            invoiced = bool(streams.get(invoice_stream(*pair)))
            if invoiced:
                found.add(pair)
            if cache is not None:
                cache.invoiced[pair] = True if invoiced else now
    return found


async def rate_accounting_batch(
    store: EventStore,
    settings: RatingSettings,
    messages: Sequence[NewEvent],
    cache: RatingCache | None = None,
    *,
    checkpoint: tuple[str, int] | None = None,
) -> list[UsageRated]:
    """Rate `messages` (AccountingRecordReceived envelopes) in order; returns the usage rated.
    Idempotent, like rating each record alone. A record that does not decode raises before
    anything is written (the caller parks it and rates the rest). `cache`: a worker's
    RatingCache, kept from batch to batch; without one, every stream is read. `checkpoint`
    (name, position): the consumer's checkpoint, moved in the same transaction as the batch's
    last write (or on its own when the batch wrote nothing)."""
    records = [(m, AccountingRecordReceived.model_validate(m.data)) for m in messages]
    cache = cache if cache is not None else RatingCache(holdings_ttl=0.0)
    rated: list[UsageRated] = []
    run: list[tuple[NewEvent, AccountingRecordReceived]] = []
    with tracer.start_as_current_span(
        "rating.rate_accounting_batch", attributes={"rating.records": len(records)}
    ):
        for message, record in records:
            if record.status in NAS_REBOOT_STATUSES:
                rated += await _rate_run(store, settings, run, cache, None)
                run = []
                cache.clear()  # the reboot closes sessions behind the cache's back
                await close_sessions_of_rebooted_nas(store, record)
            elif record.status in SESSION_STATUSES:
                run.append((message, record))
        if run:
            rated += await _rate_run(store, settings, run, cache, checkpoint)
        elif checkpoint is not None:
            await store.append_many([], checkpoint=checkpoint)
    return rated


async def _rate_run(
    store: EventStore,
    settings: RatingSettings,
    run: Sequence[tuple[NewEvent, AccountingRecordReceived]],
    cache: RatingCache,
    checkpoint: tuple[str, int] | None,
) -> list[UsageRated]:
    if not run:
        return []
    for _ in range(MAX_CONFLICT_RETRIES):
        batch = _Batch(store, settings, cache)
        try:
            await batch.prefetch([record for _, record in run])
            for message, record in run:
                batch.rate(message, record)
            # the checkpoint goes with the run's last write: the second look at unmatched
            # usage when there is any, else this append
            await batch.append(None if batch.unmatched else checkpoint)
        except (WrongExpectedVersion, EventIdConflict):
            # another writer (a redelivery, a retried parked record) recorded some of these
            # sessions' records first: read again, and they count as seen
            cache.clear()  # another worker appended to one of these sessions: read again
            continue
        except BaseException:
            # the fold works on the cached sessions themselves (copying them cost a fifth of
            # a record's rating): a failed attempt may have changed them, so they go
            cache.clear()
            raise
        cache.keep(batch.indexes, batch.sessions)
        return await batch.rate_what_was_unmatched(checkpoint)
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
    events: list[EncodedEvent] = field(default_factory=list)

    @staticmethod
    def name(key: str) -> str:
        """The stream of a key (an event appended on its own is keyed by stream and id)."""
        return key.partition("\n")[0]


@dataclass(frozen=True)
class _Usage:
    id: uuid.UUID
    stream: str
    usage: UsageRated | UsageMeasured
    causation_id: uuid.UUID
    traceparent: str | None


@dataclass
class _Unmatched:
    record: AccountingRecordReceived
    message: NewEvent
    key: str
    deltas: tuple[int, int]
    span_start: datetime
    traceparent: str | None


class _Batch:
    """One attempt at a run of records: its streams read up front (or copied from the cache),
    folded in memory, its appends collected."""

    def __init__(self, store: EventStore, settings: RatingSettings, cache: RatingCache) -> None:
        self.store = store
        self.settings = settings
        self.cache = cache
        self.indexes: dict[str, _Index] = {}
        self.sessions: dict[str, SessionState] = {}
        self.holdings: dict[str, list[UsernameHolding]] = {}
        self.tariffs: dict[str, Tariffs | None] = {}
        self.keys: dict[uuid.UUID, str] = {}
        #: session key -> when the session started (the span of its first record begins there)
        self.starts: dict[str, datetime] = {}
        #: stream -> events to append, in the order of first use; each kind in its own dict
        #: so that a session is listed and indexed before its counters, and those before usage
        self.listings: dict[str, _Stream] = {}
        self.index_appends: dict[str, _Stream] = {}
        self.counters: dict[str, _Stream] = {}
        self.pending_usage: list[_Usage] = []
        self.usage_ids: set[uuid.UUID] = set()
        self.unmatched_appends: dict[str, _Stream] = {}
        self.ids: set[str] = set()
        self.rated: list[UsageRated] = []
        self.unmatched: list[_Unmatched] = []

    # -- reads, a few queries per run ----------------------------------------------------
    async def prefetch(self, records: Sequence[AccountingRecordReceived]) -> None:
        """Every stream the run needs, from the cache (used in place: a failed attempt clears
        it) or in a few read_streams; then each record's session, opened where new."""
        await self.cache.follow_changes(self.store)
        index_streams = {session_index_stream(r.nas_id, r.acct_session_id) for r in records}
        missing = []
        for stream in index_streams:
            cached = self.cache.indexes.get(stream)
            if cached is None:
                missing.append(stream)
            else:
                self.indexes[stream] = cached  # in place, as the sessions
        for stream, history in (await self.store.read_streams(missing)).items():
            opened = []
            for recorded in history:
                decoded = recorded.decode()
                assert isinstance(decoded, RadiusSessionOpened)
                opened.append(decoded)
            self.indexes[stream] = _Index(len(history) - 1 if history else None, opened)
        for record in records:
            if record.record_id not in self.keys:
                self.keys[record.record_id] = self._session_for(record)
        missing = []
        for key in dict.fromkeys(self.keys.values()):
            state = self.cache.sessions.get(key)
            if state is None:
                missing.append(session_stream(key))
            else:
                self.sessions[key] = state  # changed in place: a failed attempt clears it
        for stream, history in (await self.store.read_streams(missing)).items():
            self.sessions[stream.removeprefix("session-")] = fold_session(history)[0]
        await self._prefetch_holdings({r.username for r in records if r.username})

    async def _prefetch_holdings(self, usernames: set[str], *, fresh: bool = False) -> None:
        now = time.monotonic()
        missing = []
        for username in usernames:
            cached = None if fresh else self.cache.holdings.get(username)
            if cached is not None and now - cached[0] <= self.cache.holdings_ttl:
                self.holdings[username] = cached[1]
                for holding in cached[1]:
                    subscription_id = holding.started.subscription_id
                    tariffs = self.cache.tariffs.get(subscription_id)
                    if tariffs is None:  # dropped with a full cache: read the username again
                        missing.append(username)
                        break
                    self.tariffs[subscription_id] = tariffs[1]
            else:
                missing.append(username)
        if not missing:
            return
        claims = await self.store.read_streams([radius_user_stream(u) for u in missing])
        wanted = [s for events in claims.values() for s in claimed_streams(events)]
        subscriptions = await self.store.read_streams(wanted)
        for username in missing:
            holdings = holdings_from(username, claims[radius_user_stream(username)], subscriptions)
            self.holdings[username] = holdings
            self.cache.holdings[username] = (now, holdings)
        await self._prefetch_tariffs(subscriptions, now)

    async def _prefetch_tariffs(
        self, subscriptions: dict[str, list[RecordedEvent]], now: float
    ) -> None:
        """Each subscription's history (from the streams just read) and its plans' versions
        (from the cache, or one read_streams), kept with the holdings."""
        histories = {
            stream.removeprefix("subscription-"): service_history_of(events)
            for stream, events in subscriptions.items()
        }
        wanted = {p for h in histories.values() if h is not None for p in plan_ids_of(h)}
        plans: dict[str, list[PlanTerms]] = {}
        missing = []
        for plan_id in wanted:
            cached = self.cache.plans.get(plan_id)
            if cached is not None and now - cached[0] <= self.cache.holdings_ttl:
                plans[plan_id] = cached[1]
            else:
                missing.append(plan_stream(plan_id))
        for stream, events in (await self.store.read_streams(missing)).items():
            plan_id = stream.removeprefix("plan-")
            plans[plan_id] = plan_versions_of(events)
            self.cache.plans[plan_id] = (now, plans[plan_id])
        for subscription_id, history in histories.items():
            tariffs = (
                None
                if history is None
                else Tariffs(history, {p: plans.get(p, []) for p in plan_ids_of(history)})
            )
            self.tariffs[subscription_id] = tariffs
            self.cache.tariffs[subscription_id] = (now, tariffs)

    def _subscriber(self, username: str | None, at: datetime) -> SubscriptionStarted | None:
        """As rate_accounting_record's rule: the subscription holding `username` that day."""
        if not username:
            return None
        day = at.astimezone(self.settings.timezone).date()
        for holding in reversed(self.holdings[username]):
            if holding.held_from <= day and (
                holding.held_until is None or day <= holding.held_until
            ):
                return holding.started
        return None

    # -- the fold ------------------------------------------------------------------------
    def _add(
        self, kind: dict[str, _Stream], stream: str, expected: ExpectedVersion, event: EncodedEvent
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

    def _session_for(self, record: AccountingRecordReceived) -> str:
        stream = session_index_stream(record.nas_id, record.acct_session_id)
        index = self.indexes[stream]
        for opened in reversed(index.opened):
            if same_session(opened.started_at, record):
                self.starts[opened.session_key] = opened.started_at
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
            encoded_event(
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
            encoded_event(
                opening,
                id=deterministic_id("session-opened", key),
                occurred_at=started_at,
                actor=ACTOR,
            ),
        )
        index.opened.append(opening)
        index.version = 0 if index.version is None else index.version + 1
        self.starts[key] = started_at
        return key

    def rate(self, message: NewEvent, record: AccountingRecordReceived) -> None:
        """Fold one record. A record that carries its packet's trace gets a span there
        (`rating.rate_accounting_record`, as one record at a time), and the events it makes
        carry that span's traceparent."""
        if message.metadata.traceparent is None:
            self._rate(message, record, None)
            return
        with tracer.start_as_current_span(
            "rating.rate_accounting_record",
            context=context_from_traceparent(message.metadata.traceparent),
            attributes={
                "radius.nas_id": record.nas_id,
                "radius.acct_session_id": record.acct_session_id,
                "radius.status": str(record.status),
            },
        ):
            self._rate(message, record, current_traceparent())

    def _rate(
        self, message: NewEvent, record: AccountingRecordReceived, traceparent: str | None
    ) -> None:
        key = self.keys[record.record_id]
        state = self.sessions[key]
        subscriber = self._subscriber(record.username, record.event_time)
        if record.record_id in state.seen:
            in_delta, out_delta = state.seen[record.record_id]
            span_start = state.span_starts.get(record.record_id)
        else:
            span_start = state.last_event_time
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
                framed_ip_address=record.framed_ip_address,
                terminate_cause=record.terminate_cause,
            )
            self._add(
                self.counters,
                session_stream(key),
                NO_STREAM if state.version is None else state.version,
                encoded_event(
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
        if span_start is None:
            span_start = self.starts[key]
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
                started_at=span_start,
            )
            self._add(
                self.unmatched_appends,
                unmatched_usage_stream(record.username),
                ANY,
                encoded_event(
                    unmatched,
                    id=deterministic_id("usage-unmatched", record.record_id),
                    occurred_at=record.event_time,
                    causation_id=message.id,
                    traceparent=traceparent,
                    actor=ACTOR,
                ),
            )
            self.unmatched.append(
                _Unmatched(record, message, key, (in_delta, out_delta), span_start, traceparent)
            )
            return
        self._rate_usage(
            customer_id=subscriber.customer_id,
            subscription_id=subscriber.subscription_id,
            key=key,
            record=record,
            deltas=(in_delta, out_delta),
            span_start=span_start,
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
        span_start: datetime,
        causation_id: uuid.UUID,
        traceparent: str | None,
    ) -> None:
        tariffs = self.tariffs.get(subscription_id)
        pieces = usage_pieces(
            self.settings,
            tariffs,
            customer_id=customer_id,
            subscription_id=subscription_id,
            session_key=key,
            record_id=record.record_id,
            deltas=deltas,
            span_start=span_start,
            occurred_at=record.event_time,
        )
        # a subscription billed by router counters: its RADIUS usage is only compared
        for stream, usage_id, usage in billed_or_measured(tariffs, pieces):
            if usage_id in self.usage_ids:
                continue  # the same record twice in the batch
            self.usage_ids.add(usage_id)
            self.pending_usage.append(_Usage(usage_id, stream, usage, causation_id, traceparent))

    async def _usage_batches(self) -> list[tuple[str, list[EncodedEvent], ExpectedVersion]]:
        """The usage folded so far, marked late where its period is invoiced already, each
        event appended on its own (ANY): one recorded by an earlier delivery is a no-op."""
        pending, self.pending_usage = self.pending_usage, []
        invoiced = await invoiced_periods(
            self.store,
            {
                (u.usage.customer_id, u.usage.period)
                for u in pending
                if isinstance(u.usage, UsageRated)
            },
            self.cache,
        )
        batches: list[tuple[str, list[EncodedEvent], ExpectedVersion]] = []
        for u in pending:
            usage = u.usage
            if isinstance(usage, UsageRated):
                if (usage.customer_id, usage.period) in invoiced:
                    usage = usage.model_copy(update={"late": True})
                self.rated.append(usage)
            event = encoded_event(
                usage,
                id=u.id,
                occurred_at=usage.occurred_at,
                causation_id=u.causation_id,
                traceparent=u.traceparent,
                actor=ACTOR,
            )
            batches.append((u.stream, [event], ANY))
        return batches

    # -- the writes ----------------------------------------------------------------------
    async def append(self, checkpoint: tuple[str, int] | None) -> None:
        batches = [
            (_Stream.name(key), pending.events, pending.expected)
            for kind in (
                self.listings,
                self.index_appends,
                self.counters,
                self.unmatched_appends,
            )
            for key, pending in kind.items()
        ]
        batches += await self._usage_batches()
        if batches or checkpoint is not None:
            await self.store.append_many(batches, checkpoint=checkpoint)

    async def rate_what_was_unmatched(
        self, checkpoint: tuple[str, int] | None = None
    ) -> list[UsageRated]:
        """A subscription may have claimed a username since this run read it; its reactor
        (rate_unmatched_usage) may then have read the username's unmatched usage before this
        run's append. Looking again now means that one of the two rates this usage."""
        if not self.unmatched:
            return self.rated
        usernames = {p.record.username for p in self.unmatched if p.record.username}
        touched = await self.cache.follow_changes(self.store)
        if touched is not None:  # only a username some change touched since the prefetch
            usernames &= touched
        await self._prefetch_holdings(usernames, fresh=True)
        for pending in self.unmatched:
            if pending.record.username not in usernames:
                continue
            subscriber = self._subscriber(pending.record.username, pending.record.event_time)
            if subscriber is None:
                continue
            self._rate_usage(
                customer_id=subscriber.customer_id,
                subscription_id=subscriber.subscription_id,
                key=pending.key,
                record=pending.record,
                deltas=pending.deltas,
                span_start=pending.span_start,
                causation_id=pending.message.id,
                traceparent=pending.traceparent,
            )
        batches = await self._usage_batches()
        if batches or checkpoint is not None:
            await self.store.append_many(batches, checkpoint=checkpoint)
        return self.rated
