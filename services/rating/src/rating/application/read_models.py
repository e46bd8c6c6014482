"""Read models of rating: usage kept unmatched, per username, and which subscription (if any)
has the username now, so that the clerk's list of unbilled usage is one indexed query; and
(`rating_projections`) every projection rating declares, for the composition root."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from ispbill_core.contracts.accounts import SubscriptionStarted
from ispbill_core.events import RecordedEvent
from ispbill_core.projections import Projection, ReadModelDatabase, Statement
from rating.application.session_read_models import LiveSessionsProjection, SessionLogProjection
from rating.application.usage_read_models import DailyUsageProjection, TopUsersProjection
from rating.application.usage_summary import UnmatchedUsage
from rating.domain.events import UsageUnmatched


def rating_projections(timezone: ZoneInfo) -> list[Projection]:
    """Rating's read models; `timezone` is the ISP's (the local day of usage)."""
    return [
        UnmatchedUsageProjection(timezone),
        DailyUsageProjection(timezone),
        TopUsersProjection(),
        LiveSessionsProjection(),
        SessionLogProjection(),
    ]


class UnmatchedUsageProjection(Projection):
    """`occurred_on` is the usage's day in the ISP's time zone: a subscription is rated from its
    start day on, so usage from before that day stays listed. Changing the time zone needs a
    rebuild (`ispbill projections rebuild rating.unmatched-usage`)."""

    name = "rating.unmatched-usage"
    version = 1
    tables = ("rm_unmatched_usage", "rm_username_subscription")
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_unmatched_usage (record_id TEXT PRIMARY KEY,"
        " username TEXT NOT NULL, nas_id TEXT NOT NULL, input_octets BIGINT NOT NULL,"
        " output_octets BIGINT NOT NULL, occurred_at TEXT NOT NULL, occurred_on TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_unmatched_usage_by_username"
        " ON rm_unmatched_usage (username, occurred_on)",
        "CREATE TABLE IF NOT EXISTS rm_username_subscription (username TEXT PRIMARY KEY,"
        " subscription_id TEXT NOT NULL, started_on TEXT NOT NULL)",
    )
    types = frozenset({UsageUnmatched.event_type, SubscriptionStarted.event_type})

    def __init__(self, timezone: ZoneInfo) -> None:
        self._timezone = timezone

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        decoded = event.decode()
        if isinstance(decoded, SubscriptionStarted):
            return [
                (
                    "INSERT INTO rm_username_subscription (username, subscription_id, started_on)"
                    " VALUES (?, ?, ?) ON CONFLICT (username) DO UPDATE SET"
                    " subscription_id = excluded.subscription_id,"
                    " started_on = excluded.started_on",
                    (
                        decoded.radius_username,
                        decoded.subscription_id,
                        decoded.started_on.isoformat(),
                    ),
                )
            ]
        assert isinstance(decoded, UsageUnmatched)
        return [
            (
                "INSERT INTO rm_unmatched_usage (record_id, username, nas_id, input_octets,"
                " output_octets, occurred_at, occurred_on) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (record_id) DO NOTHING",
                (
                    str(decoded.record_id),
                    decoded.username,
                    decoded.nas_id,
                    decoded.input_octets,
                    decoded.output_octets,
                    decoded.occurred_at.isoformat(),
                    decoded.occurred_at.astimezone(self._timezone).date().isoformat(),
                ),
            )
        ]


async def unmatched_usage_from(db: ReadModelDatabase) -> list[UnmatchedUsage]:
    """Per username, the usage still unrated (before the start day of the subscription that has
    the username now, or all of it when none has); largest first."""
    rows = await db.fetch(
        "SELECT u.username, count(*), sum(u.input_octets), sum(u.output_octets),"
        " min(u.occurred_at), max(u.occurred_at), s.subscription_id"
        " FROM rm_unmatched_usage u LEFT JOIN rm_username_subscription s"
        " ON s.username = u.username"
        " WHERE s.started_on IS NULL OR u.occurred_on < s.started_on"
        " GROUP BY u.username, s.subscription_id"
    )
    nas_rows = await db.fetch(
        "SELECT DISTINCT u.username, u.nas_id FROM rm_unmatched_usage u"
        " LEFT JOIN rm_username_subscription s ON s.username = u.username"
        " WHERE s.started_on IS NULL OR u.occurred_on < s.started_on"
    )
    nases: dict[str, set[str]] = {}
    for username, nas_id in nas_rows:
        nases.setdefault(username, set()).add(nas_id)
    found = [
        UnmatchedUsage(
            username=username,
            records=int(records),
            input_octets=int(i),
            output_octets=int(o),
            total_octets=int(i) + int(o),
            first_seen=datetime.fromisoformat(first),
            last_seen=datetime.fromisoformat(last),
            nas_ids=sorted(nases.get(username, ())),
            subscription_id=subscription_id,
        )
        for username, records, i, o, first, last, subscription_id in rows
    ]
    return sorted(found, key=lambda u: (-u.total_octets, u.username))
