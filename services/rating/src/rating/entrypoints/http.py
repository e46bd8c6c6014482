"""REST endpoints of rating, under /api/v1."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path

from ispbill_core.access import USAGE_READ
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import ID_PATTERN, PERIOD_PATTERN
from ispbill_core.projections import ReadModelDatabase
from ispbill_core.web import requires
from rating.application.read_models import unmatched_usage_from
from rating.application.usage_summary import (
    UnmatchedUsage,
    UsageSummary,
    usage_summary,
)


def rating_router(
    store: EventStore, timezone: ZoneInfo, read_models: ReadModelDatabase
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["rating"])

    @router.get("/usage/unmatched", dependencies=[requires(USAGE_READ)])
    async def unmatched() -> list[UnmatchedUsage]:
        """Usage of RADIUS usernames that no subscription has (yet), per username, largest
        first: it is rated once a subscription starts with the username, from its start on."""
        return await unmatched_usage_from(read_models)

    @router.get("/usage/{customer_id}/{period}", dependencies=[requires(USAGE_READ)])
    async def usage(
        customer_id: str = Path(pattern=ID_PATTERN),
        period: str = Path(pattern=PERIOD_PATTERN),
    ) -> UsageSummary:
        return await usage_summary(store, customer_id, period)

    return router
