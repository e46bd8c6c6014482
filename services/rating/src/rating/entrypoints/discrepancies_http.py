"""REST endpoint of rating's discrepancy report (RADIUS against router counters), /api/v1."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ispbill_core.access import USAGE_READ
from ispbill_core.input_policy import PERIOD_PATTERN
from ispbill_core.projections import ReadModelDatabase
from ispbill_core.web import requires
from rating.application.usage_discrepancies import (
    DEFAULT_THRESHOLD_PCT,
    DiscrepancyReport,
    usage_discrepancies,
)


def discrepancies_router(
    read_models: ReadModelDatabase, *, default_threshold_pct: float = DEFAULT_THRESHOLD_PCT
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["rating"])

    @router.get("/usage/discrepancies", dependencies=[requires(USAGE_READ)])
    async def discrepancies(
        period: Annotated[
            str | None, Query(pattern=PERIOD_PATTERN, description="YYYY-MM; default: every one")
        ] = None,
        threshold: Annotated[
            float | None,
            Query(
                ge=0,
                le=1000,
                description="flag differences above this percentage of the RADIUS figure"
                " (default: the server's ISPBILL_USAGE_DISCREPANCY_PCT, 5)",
            ),
        ] = None,
        include_all: Annotated[
            bool,
            Query(
                alias="all", description="every subscriber both sources measured, not only flagged"
            ),
        ] = False,
    ) -> DiscrepancyReport:
        """Subscribers whose usage RADIUS accounting and router counters both measured, per
        billing period: each source's bytes, the difference (router minus RADIUS) and its
        percentage of the RADIUS figure, flagged above the threshold."""
        return await usage_discrepancies(
            read_models,
            period=period,
            threshold_pct=default_threshold_pct if threshold is None else threshold,
            include_all=include_all,
        )

    return router
