"""Read models of rated usage: per subscription per local day and bucket, and per period the
subscriptions that used the most, so that a usage chart, a period's breakdown by time band
and the top users are each an indexed lookup, never a fold of UsageRated events."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from ispbill_core.contracts.accounts import PlanDefined, PlanVersionPublished, TimeBand
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.events import RecordedEvent
from ispbill_core.projections import (
    Projection,
    ReadModelDatabase,
    Statement,
    failure_reason,
    in_runs,
)
from ispbill_core.time_bands import counted_octets

#: The longest range of days one daily-usage query may ask for.
MAX_DAILY_RANGE_DAYS = 366
#: The most subscriptions a top-users query returns.
MAX_TOP_USERS = 100

#: `plan_id` and `plan_version` of usage rated without a plan (before buckets): the key of a
#: row may not be NULL.
_NO_PLAN = ""
_NO_VERSION = 0


# --- usage per subscription per day -------------------------------------------------------------

_ADD_DAY = (
    "INSERT INTO rm_usage_daily (subscription_id, day, band, plan_id, plan_version, suspended,"
    " customer_id, period, input_octets, output_octets, pieces)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (subscription_id, day, band, plan_id, plan_version, suspended) DO UPDATE SET"
    " input_octets = rm_usage_daily.input_octets + excluded.input_octets,"
    " output_octets = rm_usage_daily.output_octets + excluded.output_octets,"
    " pieces = rm_usage_daily.pieces + excluded.pieces"
)
_PLAN_BANDS = (
    "INSERT INTO rm_usage_plan_bands (plan_id, version, time_bands) VALUES (?, ?, ?)"
    " ON CONFLICT (plan_id, version) DO UPDATE SET time_bands = excluded.time_bands"
)


class DailyUsageProjection(Projection):
    """UsageRated summed per subscription, local day (`day`, in the ISP's time zone) and bucket
    (time band, plan version, suspended day), and each plan version's time bands, from which a
    query counts the bytes of each band as the plan says (`counted_octets`).

    Rating cuts every piece of usage at local midnight, so a piece lies in one day
    (`usage_day`). Changing the time zone needs a rebuild
    (`ispbill projections rebuild rating.usage-daily`)."""

    name = "rating.usage-daily"
    version = 1
    tables = ("rm_usage_daily", "rm_usage_plan_bands")
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_usage_daily (subscription_id TEXT NOT NULL,"
        " day TEXT NOT NULL, band TEXT NOT NULL, plan_id TEXT NOT NULL,"
        " plan_version INTEGER NOT NULL, suspended INTEGER NOT NULL, customer_id TEXT NOT NULL,"
        " period TEXT NOT NULL, input_octets BIGINT NOT NULL, output_octets BIGINT NOT NULL,"
        " pieces BIGINT NOT NULL,"
        " PRIMARY KEY (subscription_id, day, band, plan_id, plan_version, suspended))",
        # a customer's period, every subscription and bucket (the key serves a day range)
        "CREATE INDEX IF NOT EXISTS rm_usage_daily_by_customer_period"
        " ON rm_usage_daily (customer_id, period)",
        "CREATE TABLE IF NOT EXISTS rm_usage_plan_bands (plan_id TEXT NOT NULL,"
        " version INTEGER NOT NULL, time_bands TEXT NOT NULL, PRIMARY KEY (plan_id, version))",
    )
    types = frozenset(
        {UsageRated.event_type, PlanDefined.event_type, PlanVersionPublished.event_type}
    )

    def __init__(self, timezone: ZoneInfo) -> None:
        self._timezone = timezone

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        statements, parked = self.fold([event])
        if parked:
            raise ValueError(parked[0][1])
        return statements

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """The batch's usage summed per row first (sums commute): one upsert per subscription,
        day and bucket the batch touched, however many pieces it holds."""
        rows: dict[tuple[str, str, str, str, int, int], _Sum] = {}
        bands: list[Statement] = []
        parked: list[tuple[RecordedEvent, str]] = []
        for event in events:
            try:
                decoded = event.decode()
                if isinstance(decoded, PlanDefined | PlanVersionPublished):
                    version = decoded.version if isinstance(decoded, PlanVersionPublished) else 1
                    bands.append((_PLAN_BANDS, (decoded.plan_id, version, _bands_json(decoded))))
                    continue
                assert isinstance(decoded, UsageRated)
                key = (
                    decoded.subscription_id,
                    usage_day(decoded, self._timezone).isoformat(),
                    decoded.band,
                    decoded.plan_id or _NO_PLAN,
                    decoded.plan_version or _NO_VERSION,
                    int(decoded.suspended),
                )
                rows.setdefault(key, _Sum(decoded.customer_id, decoded.period)).add(decoded)
            except Exception as exc:
                parked.append((event, failure_reason(exc)))
        statements: list[Statement] = [
            (_ADD_DAY, (*key, r.customer_id, r.period, r.input_octets, r.output_octets, r.pieces))
            for key, r in rows.items()
        ]
        return in_runs([*bands, *statements]), parked


@dataclass
class _Sum:
    """A batch's usage of one row, summed before it is added to the row."""

    customer_id: str
    period: str
    input_octets: int = 0
    output_octets: int = 0
    pieces: int = 0

    def add(self, usage: UsageRated) -> None:
        self.input_octets += usage.input_octets
        self.output_octets += usage.output_octets
        self.pieces += 1


def usage_day(usage: UsageRated, timezone: ZoneInfo) -> date:
    """The local day a piece of usage lies in: the day of its first moment (a piece ends at
    its record's event time, which may be the next day's midnight), or of its record for
    usage rated before pieces had a start."""
    return (usage.started_at or usage.occurred_at).astimezone(timezone).date()


def _bands_json(plan: PlanDefined | PlanVersionPublished) -> str:
    return json.dumps([b.model_dump(mode="json") for b in plan.time_bands], sort_keys=True)


# --- the subscriptions that used the most in a period -------------------------------------------

_ADD_TOTAL = (
    "INSERT INTO rm_usage_top (period, subscription_id, customer_id, input_octets,"
    " output_octets, total_octets) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (period, subscription_id) DO UPDATE SET"
    " input_octets = rm_usage_top.input_octets + excluded.input_octets,"
    " output_octets = rm_usage_top.output_octets + excluded.output_octets,"
    " total_octets = rm_usage_top.total_octets + excluded.total_octets"
)


class TopUsersProjection(Projection):
    """Each subscription's total in each billing period, indexed by the total: a period's top
    users are the first rows of one index."""

    name = "rating.usage-top"
    version = 1
    tables = ("rm_usage_top",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_usage_top (period TEXT NOT NULL,"
        " subscription_id TEXT NOT NULL, customer_id TEXT NOT NULL,"
        " input_octets BIGINT NOT NULL, output_octets BIGINT NOT NULL,"
        " total_octets BIGINT NOT NULL, PRIMARY KEY (period, subscription_id))",
        "CREATE INDEX IF NOT EXISTS rm_usage_top_by_total"
        " ON rm_usage_top (period, total_octets DESC, subscription_id)",
    )
    types = frozenset({UsageRated.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        statements, parked = self.fold([event])
        if parked:
            raise ValueError(parked[0][1])
        return statements

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """Summed per period and subscription first: one upsert each per batch."""
        rows: dict[tuple[str, str], _Sum] = {}
        parked: list[tuple[RecordedEvent, str]] = []
        for event in events:
            try:
                usage = event.decode()
                assert isinstance(usage, UsageRated)
                key = (usage.period, usage.subscription_id)
                rows.setdefault(key, _Sum(usage.customer_id, usage.period)).add(usage)
            except Exception as exc:
                parked.append((event, failure_reason(exc)))
        return [
            (
                _ADD_TOTAL,
                (
                    *key,
                    r.customer_id,
                    r.input_octets,
                    r.output_octets,
                    r.input_octets + r.output_octets,
                ),
            )
            for key, r in rows.items()
        ], parked


# --- answers ---------------------------------------------------------------------------------


class Octets(BaseModel):
    """Bytes used: from the subscriber (input), to it (output), both, and how many of them
    count against the plan's included data (`counted_octets`: a band's multiplier applied)."""

    input_octets: int
    output_octets: int
    total_octets: int
    counted_octets: int


class BandUsage(Octets):
    #: the plan's time band ("" outside every band, or a plan without bands)
    band: str


class DailyUsage(Octets):
    """One local day of a subscription's usage, and its share per time band."""

    day: date
    period: str
    #: the subscription was suspended or on hold that day (the usage is still recorded)
    suspended: bool
    bands: list[BandUsage]


class UsageBucket(Octets):
    """A subscription's usage in one bucket of a period: time band, plan version, and whether
    the days were suspended (as rating placed it; invoicing prices these)."""

    band: str
    plan_id: str | None
    plan_version: int | None
    suspended: bool


class SubscriptionPeriodUsage(Octets):
    subscription_id: str
    buckets: list[UsageBucket]


class PeriodUsage(Octets):
    """A customer's usage in a billing period, per subscription and bucket."""

    customer_id: str
    period: str
    subscriptions: list[SubscriptionPeriodUsage]


class TopUser(BaseModel):
    """A subscription among those that used the most in a period (`rank` 1 used the most)."""

    rank: int
    subscription_id: str
    customer_id: str
    input_octets: int
    output_octets: int
    total_octets: int


@dataclass(frozen=True)
class _Counted:
    """Raw bytes and counted bytes of one (band, plan version) group."""

    input_octets: int
    output_octets: int
    counted: int


def _octets(parts: Iterable[_Counted]) -> dict[str, int]:
    i = o = c = 0
    for part in parts:
        i += part.input_octets
        o += part.output_octets
        c += part.counted
    return {"input_octets": i, "output_octets": o, "total_octets": i + o, "counted_octets": c}


class UsageQueries:
    """Rated usage as the REST API and gRPC UsageService answer it, from the projections."""

    def __init__(self, db: ReadModelDatabase) -> None:
        self._db = db

    async def _plan_bands(self, plan_ids: set[str]) -> dict[tuple[str, int], list[TimeBand]]:
        plan_ids.discard(_NO_PLAN)
        if not plan_ids:
            return {}
        marks = ", ".join("?" * len(plan_ids))
        rows = await self._db.fetch(
            "SELECT plan_id, version, time_bands FROM rm_usage_plan_bands"  # noqa: S608
            f" WHERE plan_id IN ({marks})",
            sorted(plan_ids),
        )
        return {
            (plan_id, int(version)): [TimeBand.model_validate(b) for b in json.loads(text)]
            for plan_id, version, text in rows
        }

    @staticmethod
    def _counted(
        bands: dict[tuple[str, int], list[TimeBand]],
        band: str,
        plan_id: str,
        plan_version: int,
        input_octets: int,
        output_octets: int,
    ) -> _Counted:
        """Counted per group (band, plan version), rounded down once for the group's sum: a
        plan version rating does not know of (not projected yet) counts its bytes as they are."""
        terms = bands.get((plan_id, int(plan_version)), [])
        total = int(input_octets) + int(output_octets)
        return _Counted(int(input_octets), int(output_octets), counted_octets(terms, band, total))

    async def daily(self, subscription_id: str, first: date, last: date) -> list[DailyUsage]:
        """The days from `first` to `last` (local days, both included) on which the
        subscription used anything, oldest first. At most MAX_DAILY_RANGE_DAYS days."""
        if last < first:
            raise ValueError("the range ends before it starts")
        if (last - first).days + 1 > MAX_DAILY_RANGE_DAYS:
            raise ValueError(f"a range of at most {MAX_DAILY_RANGE_DAYS} days")
        rows = await self._db.fetch(
            "SELECT day, period, band, plan_id, plan_version, suspended, sum(input_octets),"
            " sum(output_octets) FROM rm_usage_daily"
            " WHERE subscription_id = ? AND day >= ? AND day <= ?"
            " GROUP BY day, period, band, plan_id, plan_version, suspended"
            " ORDER BY day, band",
            (subscription_id, first.isoformat(), last.isoformat()),
        )
        plan_bands = await self._plan_bands({str(r[3]) for r in rows})
        days: dict[str, tuple[str, bool, dict[str, list[_Counted]]]] = {}
        for day, period, band, plan_id, plan_version, suspended, i, o in rows:
            _, was_suspended, by_band = days.setdefault(day, (period, False, {}))
            days[day] = (period, was_suspended or bool(suspended), by_band)
            by_band.setdefault(band, []).append(
                self._counted(plan_bands, band, plan_id, plan_version, i, o)
            )
        return [
            DailyUsage(
                day=date.fromisoformat(day),
                period=period,
                suspended=suspended,
                bands=[BandUsage(band=b, **_octets(parts)) for b, parts in by_band.items()],
                **_octets(p for parts in by_band.values() for p in parts),
            )
            for day, (period, suspended, by_band) in days.items()
        ]

    async def period(self, customer_id: str, period: str) -> PeriodUsage:
        """A customer's usage in `period`, per subscription (by id) and bucket."""
        rows = await self._db.fetch(
            "SELECT subscription_id, band, plan_id, plan_version, suspended, sum(input_octets),"
            " sum(output_octets) FROM rm_usage_daily WHERE customer_id = ? AND period = ?"
            " GROUP BY subscription_id, band, plan_id, plan_version, suspended"
            " ORDER BY subscription_id, band, plan_id, plan_version, suspended",
            (customer_id, period),
        )
        plan_bands = await self._plan_bands({str(r[2]) for r in rows})
        by_subscription: dict[str, list[tuple[UsageBucket, _Counted]]] = {}
        for subscription_id, band, plan_id, plan_version, suspended, i, o in rows:
            counted = self._counted(plan_bands, band, plan_id, plan_version, i, o)
            bucket = UsageBucket(
                band=band,
                plan_id=plan_id or None,
                plan_version=int(plan_version) or None,
                suspended=bool(suspended),
                **_octets([counted]),
            )
            by_subscription.setdefault(subscription_id, []).append((bucket, counted))
        subscriptions = [
            SubscriptionPeriodUsage(
                subscription_id=subscription_id,
                buckets=[b for b, _ in buckets],
                **_octets(c for _, c in buckets),
            )
            for subscription_id, buckets in by_subscription.items()
        ]
        return PeriodUsage(
            customer_id=customer_id,
            period=period,
            subscriptions=subscriptions,
            **_octets(c for buckets in by_subscription.values() for _, c in buckets),
        )

    async def top(self, period: str, limit: int) -> list[TopUser]:
        """The `limit` subscriptions (at most MAX_TOP_USERS) that used the most bytes in
        `period`, most first (ties by subscription id)."""
        if not 1 <= limit <= MAX_TOP_USERS:
            raise ValueError(f"limit is 1 to {MAX_TOP_USERS}")
        rows = await self._db.fetch(
            "SELECT subscription_id, customer_id, input_octets, output_octets, total_octets"
            " FROM rm_usage_top WHERE period = ?"
            " ORDER BY total_octets DESC, subscription_id LIMIT ?",
            (period, limit),
        )
        return [
            TopUser(
                rank=n,
                subscription_id=s,
                customer_id=c,
                input_octets=int(i),
                output_octets=int(o),
                total_octets=int(t),
            )
            for n, (s, c, i, o, t) in enumerate(rows, start=1)
        ]
