"""Use case: fold one acknowledged accounting record into its session and the customer's usage."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from opentelemetry import trace

from ispbill_core.access import system_actor
from ispbill_core.contracts.accounts import (
    PlanTerms,
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
    subscription_stream,
)
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import NewEvent, RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, EventStore, WrongExpectedVersion
from ispbill_core.service_history import ServiceHistory
from rating.application.usage_sources import billed_or_measured
from rating.domain.buckets import DayMemo, split_usage
from rating.domain.events import (
    RadiusNasRebooted,
    RadiusSessionOpened,
    SessionCountersRecorded,
    UsageUnmatched,
)
from rating.domain.sessions import SessionState

log = logging.getLogger(__name__)
#: What this records on its own carries this actor in its metadata.
ACTOR = system_actor("rating")
tracer = trace.get_tracer("ispbill.rating")

MAX_CONFLICT_RETRIES = 20


@dataclass(frozen=True)
class RatingSettings:
    timezone: ZoneInfo


def session_index_stream(nas_id: str, acct_session_id: str) -> str:
    return f"radius-session-{nas_id}-{acct_session_id}"


def session_stream(key: str) -> str:
    return f"session-{key}"


def nas_sessions_stream(nas_id: str) -> str:
    """Every session opened on a NAS, with a marker after each reboot that closed them."""
    return f"radius-nas-sessions-{nas_id}"


NAS_REBOOT_STATUSES = {AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF}


async def rate_accounting_record(
    store: EventStore, settings: RatingSettings, message: NewEvent
) -> UsageRated | None:
    """Idempotent: the same record delivered twice changes nothing the second time. One record
    is a batch of one (`rate_batch.rate_accounting_batch`): the rules live in one place, and
    the record's effects are appended in one transaction. Returns its usage, if any."""
    from rating.application.rate_batch import rate_accounting_batch

    rated = await rate_accounting_batch(store, settings, [message])
    return rated[-1] if rated else None


async def _subscriber_of(
    store: EventStore, username: str | None, settings: RatingSettings, at: datetime
) -> SubscriptionStarted | None:
    """The subscription this username's usage at `at` is rated to: the one that held the
    username on that day (in the billing time zone), from its start date or the day it took
    the username, until the day it released it (a username change: both usernames rate to the
    subscription on the day of the change). Before that (no claim, a claim whose subscription
    is not written yet, or usage from before the start date) the usage is kept unmatched; the
    reactor on SubscriptionStarted rates what the same rule then allows, so both paths agree
    on every record."""
    if not username:
        return None
    day = at.astimezone(settings.timezone).date()
    for holding in reversed(await username_holdings(store, username)):
        if holding.held_from <= day and (holding.held_until is None or day <= holding.held_until):
            return holding.started
    return None


@dataclass(frozen=True)
class UsernameHolding:
    """A subscription's use of a RADIUS username, both ends inclusive (None: still held)."""

    started: SubscriptionStarted
    held_from: date
    held_until: date | None = None


async def username_holdings(store: EventStore, username: str) -> list[UsernameHolding]:
    """Every subscription that held `username`, in order (`holdings_from`)."""
    claims = await store.read_stream(radius_user_stream(username))
    return holdings_from(username, claims, await store.read_streams(claimed_streams(claims)))


def claimed_streams(claims: Sequence[RecordedEvent]) -> list[str]:
    """The streams of the subscriptions a username's claims name."""
    return [
        subscription_stream(str(c.data.get("subscription_id")))
        for c in claims
        if c.type == RadiusUsernameAssigned.event_type
    ]


def holdings_from(
    username: str,
    claims: Sequence[RecordedEvent],
    subscriptions: Mapping[str, Sequence[RecordedEvent]],
) -> list[UsernameHolding]:
    """Every subscription that held `username`, in order, from its claims and releases and
    the claiming subscriptions' streams (accounts writes a claim before the subscription event
    that names the username). A claim whose subscription is not written yet, or does not name
    this username (left by a command that failed halfway), gives the username to no one."""
    holdings: list[UsernameHolding] = []
    claims_by: dict[str, int] = {}
    for recorded in claims:
        event = recorded.decode()
        if isinstance(event, RadiusUsernameReleased):
            last = holdings[-1] if holdings else None
            if last and last.started.subscription_id == event.subscription_id:
                holdings[-1] = replace(last, held_until=event.released_on)
            continue
        assert isinstance(event, RadiusUsernameAssigned)
        nth = claims_by.get(event.subscription_id, 0)
        claims_by[event.subscription_id] = nth + 1
        stream = subscriptions.get(subscription_stream(event.subscription_id), ())
        holding = _holding(stream, username, nth)
        if holding is not None:
            holdings.append(holding)
    return holdings


def _holding(stream: Sequence[RecordedEvent], username: str, nth: int) -> UsernameHolding | None:
    """The subscription's `nth` taking of `username`: at its start, or by a username change."""
    if not stream:
        return None
    started = stream[0].decode()
    assert isinstance(started, SubscriptionStarted)
    days = [started.started_on] if started.radius_username == username else []
    if nth >= len(days):  # the common case, a username held since the start, looks no further
        for later in stream[1:]:
            change = later.decode()
            if isinstance(change, RadiusUsernameChanged) and change.new_username == username:
                days.append(change.effective_on)
    if not days:
        return None
    return UsernameHolding(started, days[min(nth, len(days) - 1)])


@dataclass(frozen=True)
class Tariffs:
    """What a subscription's buckets are decided by: its history and its plans' versions;
    `days`, per time zone, the local days worked out from them so far (`split_usage`)."""

    history: ServiceHistory
    plans: Mapping[str, Sequence[PlanTerms]]
    days: dict[str, DayMemo] = field(default_factory=dict, compare=False, repr=False)

    def memo(self, tz: ZoneInfo) -> DayMemo:
        return self.days.setdefault(tz.key, {})


_LIFECYCLE = (
    SubscriptionPlanChanged,
    SubscriptionSuspended,
    SubscriptionResumed,
    SubscriptionHoldPlaced,
    SubscriptionTerminated,
)


def service_history_of(stream: Sequence[RecordedEvent]) -> ServiceHistory | None:
    """A subscription's history from its stream (None when the stream is empty). Events that
    are not part of the lifecycle (a username change) are passed over."""
    if not stream:
        return None
    started = stream[0].decode()
    assert isinstance(started, SubscriptionStarted)
    changes = [e for e in (r.decode() for r in stream[1:]) if isinstance(e, _LIFECYCLE)]
    return ServiceHistory.of(started, changes)


def plan_ids_of(history: ServiceHistory) -> set[str]:
    return {history.plan_id, *(plan_id for _, plan_id in history.plan_changes)}


def plan_versions_of(stream: Sequence[RecordedEvent]) -> list[PlanTerms]:
    """A plan's versions, in order (PlanDefined first)."""
    versions = []
    for recorded in stream:
        decoded = recorded.decode()
        if isinstance(decoded, PlanTerms):
            versions.append(decoded)
    return versions


async def subscription_tariffs(store: EventStore, subscription_id: str) -> Tariffs | None:
    """The subscription's history and plans, read from the ledger."""
    history = service_history_of(await store.read_stream(subscription_stream(subscription_id)))
    if history is None:
        return None
    streams = await store.read_streams([plan_stream(p) for p in sorted(plan_ids_of(history))])
    plans = {name.removeprefix("plan-"): plan_versions_of(ev) for name, ev in streams.items()}
    return Tariffs(history, plans)


def usage_pieces(
    settings: RatingSettings,
    tariffs: Tariffs | None,
    *,
    customer_id: str,
    subscription_id: str,
    session_key: str,
    record_id: uuid.UUID,
    deltas: tuple[int, int],
    span_start: datetime,
    occurred_at: datetime,
    source: Literal["radius", "router"] = "radius",
) -> list[tuple[uuid.UUID, UsageRated]]:
    """A delta's UsageRated events, one per bucket (`rating.domain.buckets`), with their ids:
    the record's own usage id when it fills one bucket (as before buckets), else one id per
    piece. Every path that rates a record (live, a batch, unmatched usage rated later) goes
    through here, so a record is split, and identified, the same way each time."""
    pieces = split_usage(
        span_start,
        occurred_at,
        deltas[0],
        deltas[1],
        settings.timezone,
        tariffs.history if tariffs else None,
        tariffs.plans if tariffs else None,
        memo=tariffs.memo(settings.timezone) if tariffs else None,
    )
    rated = []
    for n, piece in enumerate(pieces):
        bucket = piece.bucket
        usage = UsageRated(
            customer_id=customer_id,
            subscription_id=subscription_id,
            period=bucket.period,
            session_key=session_key,
            record_id=record_id,
            input_octets=piece.input_octets,
            output_octets=piece.output_octets,
            occurred_at=piece.ended_at,
            started_at=piece.started_at,
            band=bucket.band,
            plan_id=bucket.plan_id,
            plan_version=bucket.plan_version,
            suspended=bucket.suspended,
            source=source,
        )
        usage_id = (
            deterministic_id("usage-rated", record_id)
            if len(pieces) == 1
            else deterministic_id("usage-rated", record_id, n)
        )
        rated.append((usage_id, usage))
    return rated


async def subscription_with_username(
    store: EventStore, username: str
) -> SubscriptionStarted | None:
    """The subscription that holds `username` now (claimed, recorded, not released)."""
    holdings = await username_holdings(store, username)
    if holdings and holdings[-1].held_until is None:
        return holdings[-1].started
    return None


def _rated_from(started: SubscriptionStarted, settings: RatingSettings, at: datetime) -> bool:
    return at.astimezone(settings.timezone).date() >= started.started_on


async def close_sessions_of_rebooted_nas(
    store: EventStore, record: AccountingRecordReceived
) -> int:
    """Accounting-On/Off: the NAS restarted (or is about to), so every session it had open
    before then is over, Stop or not. Close each with a zero-usage entry; return how many.

    Usage is unaffected: a late Interim or Stop of a closed session still counts its bytes
    (counters are cumulative, the delta is taken against what was recorded). Idempotent: a
    redelivered or retransmitted Accounting-On closes nothing twice.
    """
    listing = nas_sessions_stream(record.nas_id)
    entries = await store.read_stream(listing)
    marker_id = deterministic_id("nas-rebooted", record.record_id)
    if any(e.id == marker_id for e in entries):
        return 0
    since_last_reboot: list[RadiusSessionOpened] = []
    for entry in entries:
        decoded = entry.decode()
        if isinstance(decoded, RadiusNasRebooted):
            # Sessions listed before an earlier reboot and started before it were closed then.
            since_last_reboot = [s for s in since_last_reboot if s.started_at >= decoded.event_time]
        elif isinstance(decoded, RadiusSessionOpened):
            since_last_reboot.append(decoded)
    closed = 0
    for opened in since_last_reboot:
        if opened.started_at >= record.event_time:
            continue  # a session of the NAS's new life
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                closed += await _close_session(store, opened.session_key, record)
                break
            except WrongExpectedVersion:
                continue
        else:
            raise RuntimeError(f"session {opened.session_key} kept conflicting")
    marker = RadiusNasRebooted(
        nas_id=record.nas_id,
        record_id=record.record_id,
        status=str(record.status),
        event_time=record.event_time,
        sessions_closed=closed,
    )
    await store.append(
        listing, [new_event(marker, id=marker_id, occurred_at=record.event_time, actor=ACTOR)], ANY
    )
    log.info("NAS %s rebooted (%s): %d open sessions closed", record.nas_id, record.status, closed)
    return closed


async def _load_session(
    store: EventStore, stream: str
) -> tuple[SessionState, SessionCountersRecorded | None]:
    """The session folded from its stream, and the last entry (None for a new session)."""
    return fold_session(await store.read_stream(stream))


def fold_session(
    history: Sequence[RecordedEvent],
) -> tuple[SessionState, SessionCountersRecorded | None]:
    """A session's state from its stream's events, and the last entry (None when empty)."""
    state = SessionState()
    last: SessionCountersRecorded | None = None
    for recorded in history:
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
        last = applied
    return state, last


async def _close_session(store: EventStore, key: str, record: AccountingRecordReceived) -> int:
    stream = session_stream(key)
    state, last = await _load_session(store, stream)
    if last is None or state.closed or record.record_id in state.seen:
        return 0
    assert state.version is not None
    closing = SessionCountersRecorded(
        session_key=key,
        record_id=record.record_id,
        status=str(record.status),
        username=last.username,
        customer_id=last.customer_id,
        subscription_id=last.subscription_id,
        event_time=max(record.event_time, last.event_time),
        input_octets=state.input_octets,
        output_octets=state.output_octets,
        input_delta=0,
        output_delta=0,
        closed=True,
    )
    await store.append(
        stream,
        [
            new_event(
                closing,
                id=deterministic_id("session-closed-by-nas", record.record_id, key),
                occurred_at=record.event_time,
                actor=ACTOR,
            )
        ],
        state.version,
    )
    return 1


async def _append_usage(
    store: EventStore,
    settings: RatingSettings,
    unmatched: UsageUnmatched,
    *,
    customer_id: str,
    subscription_id: str,
    causation_id: uuid.UUID,
    traceparent: str | None,
) -> list[UsageRated]:
    """Usage kept unmatched, rated now: in the customer's streams of the periods it happened
    in, split into buckets as the live path splits it (`usage_pieces`), with the same ids, so
    rating the same record again, by either path, records it once."""
    from rating.application.rate_batch import invoiced_periods

    tariffs = await subscription_tariffs(store, subscription_id)
    pieces = usage_pieces(
        settings,
        tariffs,
        customer_id=customer_id,
        subscription_id=subscription_id,
        session_key=unmatched.session_key,
        record_id=unmatched.record_id,
        deltas=(unmatched.input_octets, unmatched.output_octets),
        span_start=unmatched.started_at or unmatched.occurred_at,
        occurred_at=unmatched.occurred_at,
        source=unmatched.source,
    )
    late = await invoiced_periods(store, {(customer_id, u.period) for _, u in pieces})
    pieces = [
        (i, u.model_copy(update={"late": True}) if (customer_id, u.period) in late else u)
        for i, u in pieces
    ]
    kept = billed_or_measured(tariffs, pieces)  # billed by its usage_source, else compared
    await store.append_many(
        [
            (
                stream,
                [
                    new_event(
                        usage,
                        id=usage_id,
                        occurred_at=usage.occurred_at,
                        causation_id=causation_id,
                        traceparent=traceparent,
                        actor=ACTOR,
                    )
                ],
                ANY,
            )
            for stream, usage_id, usage in kept
        ]
    )
    return [usage for _, _, usage in kept if isinstance(usage, UsageRated)]


def unmatched_usage_stream(username: str) -> str:
    return f"unmatched-usage-{username}"


async def rate_unmatched_usage(
    store: EventStore, settings: RatingSettings, started: SubscriptionStarted
) -> list[UsageRated]:
    """A subscription started with a username that already had usage: rate what was used from
    the subscription's start date on (in the billing time zone), as the live path does from now
    on; what came before stays unmatched, listed for the clerk. Idempotent (the usage ids are
    the records')."""
    rated: list[UsageRated] = []
    for recorded in await store.read_stream(unmatched_usage_stream(started.radius_username)):
        unmatched = recorded.decode()
        assert isinstance(unmatched, UsageUnmatched)
        if not _rated_from(started, settings, unmatched.occurred_at):
            continue
        rated += await _append_usage(
            store,
            settings,
            unmatched,
            customer_id=started.customer_id,
            subscription_id=started.subscription_id,
            causation_id=recorded.id,
            traceparent=recorded.metadata.traceparent,
        )
    if rated:
        log.info(
            "usage of %r before its subscription %s was recorded: %d records rated",
            started.radius_username,
            started.subscription_id,
            len(rated),
        )
    return rated


async def rate_unmatched_usage_of_new_username(
    store: EventStore, settings: RatingSettings, change: RadiusUsernameChanged
) -> list[UsageRated]:
    """A subscription took a username that already had usage (the router was reconfigured
    before the clerk recorded the change): rate what the live path would now rate to it, from
    the change's day on; earlier usage stays unmatched. Idempotent, as rate_unmatched_usage."""
    rated: list[UsageRated] = []
    for recorded in await store.read_stream(unmatched_usage_stream(change.new_username)):
        unmatched = recorded.decode()
        assert isinstance(unmatched, UsageUnmatched)
        holder = await _subscriber_of(store, change.new_username, settings, unmatched.occurred_at)
        if holder is None or holder.subscription_id != change.subscription_id:
            continue
        rated += await _append_usage(
            store,
            settings,
            unmatched,
            customer_id=holder.customer_id,
            subscription_id=holder.subscription_id,
            causation_id=recorded.id,
            traceparent=recorded.metadata.traceparent,
        )
    return rated
