"""Read side of rating: a customer's rated usage in a billing period, and the usage that no
subscription has been rated for."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.queries import recorded_of_types
from rating.application.rate_accounting_record import subscription_with_username
from rating.domain.events import UsageUnmatched


class UsageSummary(BaseModel):
    customer_id: str
    period: str
    input_octets: int
    output_octets: int
    total_octets: int
    records: int


async def usage_summary(store: EventStore, customer_id: str, period: str) -> UsageSummary:
    i = o = n = 0
    for recorded in await store.read_stream(usage_stream(customer_id, period)):
        usage = recorded.decode()
        assert isinstance(usage, UsageRated)
        i += usage.input_octets
        o += usage.output_octets
        n += 1
    return UsageSummary(
        customer_id=customer_id,
        period=period,
        input_octets=i,
        output_octets=o,
        total_octets=i + o,
        records=n,
    )


class UnmatchedUsage(BaseModel):
    """Usage of one RADIUS username that no subscription has been rated for: a username typed
    differently on the NAS and in ispbill, or a subscription not recorded yet."""

    username: str
    records: int
    input_octets: int
    output_octets: int
    total_octets: int
    first_seen: datetime
    last_seen: datetime
    nas_ids: list[str]
    #: the subscription that has the username now, when this usage came before its start
    subscription_id: str | None = None


async def unmatched_usage(store: EventStore, timezone: ZoneInfo) -> list[UnmatchedUsage]:
    """Per username, the usage still unrated; largest first."""
    by_username: dict[str, list[UsageUnmatched]] = defaultdict(list)
    for recorded in await recorded_of_types(store, UsageUnmatched.event_type):
        usage = recorded.decode()
        assert isinstance(usage, UsageUnmatched)
        by_username[usage.username].append(usage)
    found: list[UnmatchedUsage] = []
    for username, usages in by_username.items():
        started = await subscription_with_username(store, username)
        if started is not None:  # rated from its start on (rate_unmatched_usage)
            usages = [
                u for u in usages if u.occurred_at.astimezone(timezone).date() < started.started_on
            ]
        if not usages:
            continue
        i = sum(u.input_octets for u in usages)
        o = sum(u.output_octets for u in usages)
        found.append(
            UnmatchedUsage(
                username=username,
                records=len(usages),
                input_octets=i,
                output_octets=o,
                total_octets=i + o,
                first_seen=min(u.occurred_at for u in usages),
                last_seen=max(u.occurred_at for u in usages),
                nas_ids=sorted({u.nas_id for u in usages}),
                subscription_id=started.subscription_id if started else None,
            )
        )
    return sorted(found, key=lambda u: (-u.total_octets, u.username))
