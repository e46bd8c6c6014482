"""REST endpoints of rating, under /api/v1: usage and sessions, read from rating's projections
(and a customer's period total from its usage stream)."""

from __future__ import annotations

from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query
from fastapi.exceptions import RequestValidationError

from ispbill_core.access import USAGE_READ
from ispbill_core.contracts.rating import (
    FairUsageLimitReached,
    QuotaThresholdReached,
    tariff_stream,
)
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import ID_PATTERN, MAX_CURSOR, PERIOD_PATTERN, BillingDate
from ispbill_core.projections import ReadModelDatabase
from ispbill_core.web import requires
from rating.application.read_models import unmatched_usage_from
from rating.application.session_read_models import (
    LOG_CURSOR_PATTERN,
    MAX_SESSIONS_PAGE,
    USERNAME_PATTERN,
    LiveSession,
    LogCursor,
    LoggedSession,
    SessionQueries,
)
from rating.application.usage_read_models import (
    MAX_DAILY_RANGE_DAYS,
    MAX_TOP_USERS,
    DailyUsage,
    PeriodUsage,
    TopUser,
    UsageQueries,
)
from rating.application.usage_summary import (
    UnmatchedUsage,
    UsageSummary,
    usage_summary,
)


def _refuse(parameter: str, message: str) -> RequestValidationError:
    """A 422 problem, as for any other invalid query parameter, for a rule that ties two
    parameters together (which the OpenAPI document cannot state)."""
    return RequestValidationError(
        [{"loc": ("query", parameter), "msg": message, "type": "value_error"}]
    )


def _check_range(first: date | None, last: date | None, *, max_days: int | None = None) -> None:
    if first is not None and last is not None:
        if last < first:
            raise _refuse("to", "`to` is before `from`")
        if max_days is not None and (last - first).days + 1 > max_days:
            raise _refuse("to", f"a range of at most {max_days} days")


def rating_router(
    store: EventStore, timezone: ZoneInfo, read_models: ReadModelDatabase
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["rating"])
    usage_reads = UsageQueries(read_models)
    session_reads = SessionQueries(read_models, timezone)

    @router.get("/usage/unmatched", dependencies=[requires(USAGE_READ)])
    async def unmatched() -> list[UnmatchedUsage]:
        """Usage of RADIUS usernames that no subscription has (yet), per username, largest
        first: it is rated once a subscription starts with the username, from its start on."""
        return await unmatched_usage_from(read_models)

    @router.get("/usage/daily", dependencies=[requires(USAGE_READ)])
    async def daily(
        subscription_id: Annotated[str, Query(pattern=ID_PATTERN)],
        from_: Annotated[BillingDate, Query(alias="from", description="the first day")],
        to: Annotated[BillingDate, Query(description="the last day (included)")],
    ) -> list[DailyUsage]:
        """A subscription's usage per local day (in the ISP's time zone) from `from` to `to`,
        at most 366 days, oldest first; days without usage are left out. Each day has its
        bytes per time band, and `counted_octets`: the bytes that count against the plan's
        included data (a band's multiplier applied; a "free" band counts none)."""
        _check_range(from_, to, max_days=MAX_DAILY_RANGE_DAYS)
        return await usage_reads.daily(subscription_id, from_, to)

    @router.get("/usage/top", dependencies=[requires(USAGE_READ)])
    async def top(
        period: str = Query(pattern=PERIOD_PATTERN),
        limit: int = Query(default=10, ge=1, le=MAX_TOP_USERS),
    ) -> list[TopUser]:
        """The subscriptions that used the most bytes (in and out) in a billing period, most
        first, at most 100."""
        return await usage_reads.top(period, limit)

    @router.get(
        "/subscriptions/{subscription_id}/thresholds/{period}",
        dependencies=[requires(USAGE_READ)],
    )
    async def thresholds(
        subscription_id: str = Path(pattern=ID_PATTERN),
        period: str = Path(pattern=PERIOD_PATTERN),
    ) -> list[QuotaThresholdReached | FairUsageLimitReached]:
        """The quota thresholds (80 %, 100 %) and fair-usage limits the subscription reached
        in the period, in the order reached (from its tariff stream: one indexed read)."""
        reached = [
            r.decode() for r in await store.read_stream(tariff_stream(subscription_id, period))
        ]
        return [e for e in reached if isinstance(e, QuotaThresholdReached | FairUsageLimitReached)]

    @router.get("/usage/{customer_id}/{period}", dependencies=[requires(USAGE_READ)])
    async def usage(
        customer_id: str = Path(pattern=ID_PATTERN),
        period: str = Path(pattern=PERIOD_PATTERN),
    ) -> UsageSummary:
        """A customer's rated bytes in a billing period (summed from its usage stream: exact
        the moment rating has recorded them)."""
        return await usage_summary(store, customer_id, period)

    @router.get("/usage/{customer_id}/{period}/buckets", dependencies=[requires(USAGE_READ)])
    async def buckets(
        customer_id: str = Path(pattern=ID_PATTERN),
        period: str = Path(pattern=PERIOD_PATTERN),
    ) -> PeriodUsage:
        """A customer's usage in a billing period per subscription and bucket: time band,
        plan version, and whether the days were suspended, with the bytes each band counts
        against the plan's included data."""
        return await usage_reads.period(customer_id, period)

    @router.get("/sessions/live", dependencies=[requires(USAGE_READ)])
    async def live_sessions(
        nas_id: str | None = Query(default=None, pattern=ID_PATTERN),
        username: str | None = Query(default=None, max_length=253, pattern=USERNAME_PATTERN),
        limit: int = Query(default=100, ge=1, le=MAX_SESSIONS_PAGE),
        before: int | None = Query(
            default=None,
            ge=0,
            le=MAX_CURSOR,
            description="the `cursor` of the last session of the page before",
        ),
    ) -> list[LiveSession]:
        """The sessions open now (no Stop yet, NAS not restarted since), the most recently
        opened first: username, subscriber, NAS, framed IP, start, bytes so far and the last
        record's time. A session leaves the list with the record that closes it."""
        return await session_reads.live(
            nas_id=nas_id, username=username, limit=limit, before=before
        )

    @router.get("/customers/{customer_id}/sessions", dependencies=[requires(USAGE_READ)])
    async def session_log(
        customer_id: str = Path(pattern=ID_PATTERN),
        subscription_id: str | None = Query(default=None, pattern=ID_PATTERN),
        from_: Annotated[
            BillingDate | None, Query(alias="from", description="started on or after this day")
        ] = None,
        to: Annotated[
            BillingDate | None, Query(description="started on or before this day")
        ] = None,
        limit: int = Query(default=100, ge=1, le=MAX_SESSIONS_PAGE),
        before: str | None = Query(
            default=None,
            pattern=LOG_CURSOR_PATTERN,
            description="the `cursor` of the last session of the page before",
        ),
    ) -> list[LoggedSession]:
        """A customer's sessions (of one subscription, when given), the newest start first,
        for resolving a dispute: start, stop, duration, bytes, NAS, framed IP, how it ended
        (`closed_by`, `terminate_cause`). Days are local days in the ISP's time zone."""
        _check_range(from_, to)
        return await session_reads.log(
            customer_id,
            subscription_id=subscription_id,
            first=from_,
            last=to,
            limit=limit,
            before=None if before is None else LogCursor.parse(before),
        )

    return router
