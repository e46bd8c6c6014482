"""REST endpoints of rating, under /api/v1."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path

from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import ID_PATTERN, PERIOD_PATTERN
from rating.application.usage_summary import (
    UnmatchedUsage,
    UsageSummary,
    unmatched_usage,
    usage_summary,
)


def rating_router(store: EventStore, timezone: ZoneInfo) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["rating"])

    @router.get("/usage/unmatched")
    async def unmatched() -> list[UnmatchedUsage]:
        """Usage of RADIUS usernames that no subscription has (yet), per username, largest
        first: it is rated once a subscription starts with the username, from its start on."""
        return await unmatched_usage(store, timezone)

    @router.get("/usage/{customer_id}/{period}")
    async def usage(
        customer_id: str = Path(pattern=ID_PATTERN),
        period: str = Path(pattern=PERIOD_PATTERN),
    ) -> UsageSummary:
        return await usage_summary(store, customer_id, period)

    return router
