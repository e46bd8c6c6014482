"""Use case: rate routers' byte counters (RouterCountersSampled) into the usage of the
subscriptions they measure: static-IP and queue customers that have no RADIUS accounting.

Which subscription a sample measures (`counter_owner`):

- the sample's `username` (a PPPoE interface's name, a simple queue mapped to a username),
  when it has one: the subscription that held that RADIUS username on the sample's day, by
  the rule RADIUS records follow (`rate_accounting_record._subscriber_of`);
- else its `subscriber_hint` (the poller config's label for an SNMP interface or a queue):
  `subscription:<subscription_id>` names a subscription (from its start day to its last day);
  `username:<name>` or a bare `<name>` names a RADIUS username, as above. A customer id is not
  accepted: a customer may have several subscriptions, and the hint must say which one;
- neither: the sample measures no one, and nothing is recorded.

A sample whose username or subscription no one holds on its day (a subscription not recorded
yet, usage from before its start) is kept as `UsageUnmatched` (source "router") in the
`unmatched-usage-<name>` stream of the username or the hint, listed with RADIUS's unmatched
usage. The reactor on SubscriptionStarted rates a username's entries from the start day on, as
it does RADIUS's; entries of a `subscription:` hint stay listed.

The delta is spread over [the previous sample's time, this sample's time]
(`previous_sampled_at`; a sample without it is a point in time) and split into buckets by
`usage_pieces`, source "router". Whether those bytes are billed is the subscription's
`usage_source` (`usage_sources.billed_or_measured`): billed (UsageRated) when it is "router",
else kept as UsageMeasured, only compared with the RADIUS figure. RADIUS accounting of a
subscription billed by router counters is kept the same way, so no subscriber is billed twice.

Every id derives from the sample's event id (the collector's uuid5 of router, counter and
time), so a sample delivered twice, or rated by this path and by the reactor, counts once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import trace

from ispbill_core.contracts.accounts import (
    SubscriptionStarted,
    plan_stream,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import RouterCountersSampled
from ispbill_core.events import AnyNewEvent, DomainEvent, NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, EventStore, ExpectedVersion
from rating.application.rate_accounting_record import (
    ACTOR,
    RatingSettings,
    Tariffs,
    UsernameHolding,
    claimed_streams,
    holdings_from,
    plan_ids_of,
    plan_versions_of,
    service_history_of,
    unmatched_usage_stream,
    usage_pieces,
)
from rating.application.usage_sources import billed_or_measured
from rating.domain.events import UsageUnmatched

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ispbill.rating")

#: subscriber_hint prefixes: a subscription's id, or (the default for a bare hint) a username
SUBSCRIPTION_HINT = "subscription:"
USERNAME_HINT = "username:"


@dataclass(frozen=True)
class CounterOwner:
    """Whom a sample names: a RADIUS username, or a subscription by its id."""

    username: str | None = None
    subscription_id: str | None = None

    @property
    def name(self) -> str:
        """How its unmatched usage is listed: the username, or the hint as written."""
        if self.username is not None:
            return self.username
        return f"{SUBSCRIPTION_HINT}{self.subscription_id}"


def counter_owner(sample: RouterCountersSampled) -> CounterOwner | None:
    """The owner a sample names (the module's docstring has the convention), or None."""
    if sample.username:
        return CounterOwner(username=sample.username)
    hint = (sample.subscriber_hint or "").strip()
    if hint.startswith(SUBSCRIPTION_HINT):
        subscription_id = hint.removeprefix(SUBSCRIPTION_HINT)
        return CounterOwner(subscription_id=subscription_id) if subscription_id else None
    username = hint.removeprefix(USERNAME_HINT)
    return CounterOwner(username=username) if username else None


def router_session_key(sample: RouterCountersSampled) -> str:
    """What UsageRated's `session_key` says for router usage: the counter it was read from."""
    return f"router:{sample.router_id}/{sample.interface_key}"


@dataclass(frozen=True)
class Subscribers:
    """What a batch of samples needs to know about their owners, read in a few queries."""

    holdings: Mapping[str, Sequence[UsernameHolding]]
    #: subscription id -> its first event (None: no such subscription recorded)
    started: Mapping[str, SubscriptionStarted | None]
    tariffs: Mapping[str, Tariffs | None]

    def owner_on(
        self, owner: CounterOwner, settings: RatingSettings, at: datetime
    ) -> SubscriptionStarted | None:
        """The subscription that `owner` means at `at` (its day in the billing time zone)."""
        day = at.astimezone(settings.timezone).date()
        if owner.username is not None:
            for holding in reversed(self.holdings.get(owner.username, ())):
                if holding.held_from <= day and (
                    holding.held_until is None or day <= holding.held_until
                ):
                    return holding.started
            return None
        assert owner.subscription_id is not None
        started = self.started.get(owner.subscription_id)
        tariffs = self.tariffs.get(owner.subscription_id)
        if started is None or tariffs is None or day < started.started_on:
            return None
        terminated_on = tariffs.history.terminated_on
        return started if terminated_on is None or day <= terminated_on else None


async def read_subscribers(store: EventStore, owners: Sequence[CounterOwner]) -> Subscribers:
    """The owners' username claims, subscriptions and plans."""
    usernames = sorted({o.username for o in owners if o.username is not None})
    named = sorted({o.subscription_id for o in owners if o.subscription_id is not None})
    claims = await store.read_streams([radius_user_stream(u) for u in usernames])
    wanted = [s for events in claims.values() for s in claimed_streams(events)]
    streams = await store.read_streams([*wanted, *(subscription_stream(s) for s in named)])
    holdings = {u: holdings_from(u, claims[radius_user_stream(u)], streams) for u in usernames}
    started: dict[str, SubscriptionStarted | None] = {}
    histories = {}
    for stream, events in streams.items():
        subscription_id = stream.removeprefix("subscription-")
        first = events[0].decode() if events else None
        started[subscription_id] = first if isinstance(first, SubscriptionStarted) else None
        histories[subscription_id] = (
            service_history_of(events) if started[subscription_id] else None
        )
    plan_ids = sorted({p for h in histories.values() if h is not None for p in plan_ids_of(h)})
    plans = {
        name.removeprefix("plan-"): plan_versions_of(events)
        for name, events in (await store.read_streams([plan_stream(p) for p in plan_ids])).items()
    }
    tariffs = {
        sid: None if h is None else Tariffs(h, {p: plans.get(p, []) for p in plan_ids_of(h)})
        for sid, h in histories.items()
    }
    return Subscribers(holdings, started, tariffs)


@dataclass
class _Pending:
    """A sample that measured no one when it was read: looked at again after the append."""

    message: NewEvent
    sample: RouterCountersSampled
    owner: CounterOwner


class _Appends:
    """The events of a batch, each appended on its own with ANY: one recorded by an earlier
    delivery is a no-op, not a conflict with the new ones beside it."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, Sequence[AnyNewEvent], ExpectedVersion]] = []
        self.ids: set[uuid.UUID] = set()
        self.rated: list[UsageRated] = []

    def add(
        self, stream: str, event: DomainEvent, event_id: uuid.UUID, at: datetime, cause: NewEvent
    ) -> None:
        if event_id in self.ids:
            return  # the same sample twice in one batch
        self.ids.add(event_id)
        if isinstance(event, UsageRated):
            self.rated.append(event)
        recorded = new_event(
            event,
            id=event_id,
            occurred_at=at,
            causation_id=cause.id,
            traceparent=cause.metadata.traceparent,
            actor=ACTOR,
        )
        self.batches.append((stream, [recorded], ANY))


def _rate_sample(
    appends: _Appends,
    settings: RatingSettings,
    subscribers: Subscribers,
    message: NewEvent,
    sample: RouterCountersSampled,
    subscriber: SubscriptionStarted,
) -> None:
    tariffs = subscribers.tariffs.get(subscriber.subscription_id)
    pieces = usage_pieces(
        settings,
        tariffs,
        customer_id=subscriber.customer_id,
        subscription_id=subscriber.subscription_id,
        session_key=router_session_key(sample),
        record_id=message.id,
        deltas=(sample.delta_in, sample.delta_out),
        span_start=span_start(sample),
        occurred_at=sample.sampled_at,
        source="router",
    )
    for stream, event_id, usage in billed_or_measured(tariffs, pieces):
        appends.add(stream, usage, event_id, usage.occurred_at, message)


def span_start(sample: RouterCountersSampled) -> datetime:
    """Where the time a delta covers begins: the previous sample (never after this one)."""
    previous = sample.previous_sampled_at
    return sample.sampled_at if previous is None else min(previous, sample.sampled_at)


async def rate_router_counters(
    store: EventStore,
    settings: RatingSettings,
    messages: Sequence[NewEvent],
    *,
    checkpoint: tuple[str, int] | None = None,
) -> list[UsageRated]:
    """Rate `messages` (RouterCountersSampled envelopes); returns the usage billed. One
    `append_many` for the batch, with `checkpoint` (name, position) when given. Idempotent. A
    message that does not decode raises before anything is written (the caller parks it)."""
    samples = [(m, RouterCountersSampled.model_validate(m.data)) for m in messages]
    with tracer.start_as_current_span(
        "rating.rate_router_counters", attributes={"rating.samples": len(samples)}
    ):
        moved = [
            (m, s, owner)
            for m, s in samples
            if (s.delta_in or s.delta_out) and (owner := counter_owner(s)) is not None
        ]
        subscribers = await read_subscribers(store, [owner for _, _, owner in moved])
        appends = _Appends()
        pending: list[_Pending] = []
        for message, sample, owner in moved:
            subscriber = subscribers.owner_on(owner, settings, sample.sampled_at)
            if subscriber is not None:
                _rate_sample(appends, settings, subscribers, message, sample, subscriber)
                continue
            unmatched = UsageUnmatched(
                username=owner.name,
                nas_id=sample.router_id,
                session_key=router_session_key(sample),
                record_id=message.id,
                input_octets=sample.delta_in,
                output_octets=sample.delta_out,
                occurred_at=sample.sampled_at,
                started_at=span_start(sample),
                source="router",
            )
            appends.add(
                unmatched_usage_stream(owner.name),
                unmatched,
                deterministic_id("usage-unmatched", message.id),
                sample.sampled_at,
                message,
            )
            pending.append(_Pending(message, sample, owner))
            log.warning(
                "router %s counter %s measured %d bytes of %r, which no subscription has (or not"
                " yet at that date), kept unrated",
                sample.router_id,
                sample.interface_key,
                sample.delta_in + sample.delta_out,
                owner.name,
            )
        if appends.batches or checkpoint is not None:
            await store.append_many(appends.batches, checkpoint=checkpoint)
        if pending:
            await _rate_what_was_unmatched(store, settings, appends, pending)
    return appends.rated


async def _rate_what_was_unmatched(
    store: EventStore, settings: RatingSettings, appends: _Appends, pending: Sequence[_Pending]
) -> None:
    """A subscription may have claimed the username since it was read, and its reactor may have
    read the unmatched stream before the append above: looking again now means that one of the
    two rates the usage (with the same ids)."""
    subscribers = await read_subscribers(store, [p.owner for p in pending])
    again = _Appends()
    again.ids = set(appends.ids)
    for p in pending:
        subscriber = subscribers.owner_on(p.owner, settings, p.sample.sampled_at)
        if subscriber is not None:
            _rate_sample(again, settings, subscribers, p.message, p.sample, subscriber)
    if again.batches:
        await store.append_many(again.batches)
        appends.rated += again.rated
