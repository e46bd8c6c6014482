"""Read model and report of usage by source: per subscription and period, the bytes RADIUS
accounting measured and the bytes router counters measured, and where the two disagree.

Both figures come from what rating recorded: UsageRated (the billed source's usage) and
UsageMeasured (the other source's, compared only). A subscription and period is in the report
when both sources measured it. The difference is router minus RADIUS; its percentage is of the
RADIUS figure (RADIUS counts each session at the NAS, the reference an ISP reconciles a
router's interface against). It is flagged when that percentage, either way, is above the
threshold, or when RADIUS measured nothing and the router did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from ispbill_core.contracts.rating import UsageRated
from ispbill_core.events import RecordedEvent
from ispbill_core.projections import Projection, ReadModelDatabase, Statement
from rating.domain.events import UsageMeasured

#: flagged above this difference, in percent of the RADIUS figure, unless configured otherwise
DEFAULT_THRESHOLD_PCT = 5.0


class UsageBySourceProjection(Projection):
    """A row per subscription, billing period and source: the bytes measured, and how many of
    them were billed (all of the billing source's, none of the other's)."""

    name = "rating.usage-by-source"
    version = 1
    tables = ("rm_usage_by_source",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_usage_by_source (subscription_id TEXT NOT NULL,"
        " period TEXT NOT NULL, source TEXT NOT NULL, customer_id TEXT NOT NULL,"
        " input_octets BIGINT NOT NULL, output_octets BIGINT NOT NULL,"
        " billed_octets BIGINT NOT NULL, PRIMARY KEY (subscription_id, period, source))",
        "CREATE INDEX IF NOT EXISTS rm_usage_by_source_by_period"
        " ON rm_usage_by_source (period, source)",
    )
    types = frozenset({UsageRated.event_type, UsageMeasured.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        usage = event.decode()
        assert isinstance(usage, UsageRated | UsageMeasured)
        billed = usage.input_octets + usage.output_octets if isinstance(usage, UsageRated) else 0
        return [
            (
                "INSERT INTO rm_usage_by_source (subscription_id, period, source, customer_id,"
                " input_octets, output_octets, billed_octets) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (subscription_id, period, source) DO UPDATE SET"
                " input_octets = rm_usage_by_source.input_octets + excluded.input_octets,"
                " output_octets = rm_usage_by_source.output_octets + excluded.output_octets,"
                " billed_octets = rm_usage_by_source.billed_octets + excluded.billed_octets",
                (
                    usage.subscription_id,
                    usage.period,
                    usage.source,
                    usage.customer_id,
                    usage.input_octets,
                    usage.output_octets,
                    billed,
                ),
            )
        ]


class UsageDiscrepancy(BaseModel):
    """One subscription's usage in one period as each source measured it."""

    subscription_id: str
    customer_id: str
    period: str
    radius_octets: int
    router_octets: int
    #: router minus RADIUS
    difference_octets: int
    #: the difference in percent of the RADIUS figure, 2 decimals (None: RADIUS measured 0)
    difference_pct: float | None
    flagged: bool
    #: the source whose usage was billed (None: neither billed anything)
    billed_by: Literal["radius", "router"] | None


class DiscrepancyReport(BaseModel):
    period: str | None
    threshold_pct: float
    #: subscriptions and periods that both sources measured
    compared: int
    flagged: int
    #: the flagged ones, or all compared (`all`), most different first
    discrepancies: list[UsageDiscrepancy]


def is_flagged(radius: int, router: int, threshold_pct: float) -> bool:
    """Above the threshold, either way (exact: no rounding decides a flag)."""
    if radius == 0:
        return router > 0
    return abs(router - radius) * 100 > threshold_pct * radius


def discrepancy(
    subscription_id: str,
    customer_id: str,
    period: str,
    radius: tuple[int, int],
    router: tuple[int, int],
    threshold_pct: float,
) -> UsageDiscrepancy:
    """One comparison from each source's (octets, billed octets)."""
    radius_octets, router_octets = radius[0], router[0]
    difference = router_octets - radius_octets
    billed_by: Literal["radius", "router"] | None = (
        "radius" if radius[1] else "router" if router[1] else None
    )
    return UsageDiscrepancy(
        subscription_id=subscription_id,
        customer_id=customer_id,
        period=period,
        radius_octets=radius_octets,
        router_octets=router_octets,
        difference_octets=difference,
        difference_pct=round(difference * 100 / radius_octets, 2) if radius_octets else None,
        flagged=is_flagged(radius_octets, router_octets, threshold_pct),
        billed_by=billed_by,
    )


async def usage_discrepancies(
    db: ReadModelDatabase,
    *,
    period: str | None = None,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
    include_all: bool = False,
) -> DiscrepancyReport:
    """Every subscription and period (or the one `period`) both sources measured, compared;
    the flagged ones only unless `include_all`. One indexed query on the read model."""
    sql = (
        "SELECT r.subscription_id, r.customer_id, r.period,"
        " r.input_octets + r.output_octets, r.billed_octets,"
        " t.input_octets + t.output_octets, t.billed_octets"
        " FROM rm_usage_by_source r JOIN rm_usage_by_source t"
        " ON t.subscription_id = r.subscription_id AND t.period = r.period AND t.source = ?"
        " WHERE r.source = ?"
    )
    params: tuple[str, ...] = ("router", "radius")
    if period is not None:
        sql += " AND r.period = ?"
        params += (period,)
    compared = [
        discrepancy(
            sid,
            customer_id,
            row_period,
            (int(radius), int(radius_billed)),
            (int(router), int(router_billed)),
            threshold_pct,
        )
        for sid, customer_id, row_period, radius, radius_billed, router, router_billed in (
            await db.fetch(sql, params)
        )
    ]
    compared.sort(
        key=lambda d: (
            not d.flagged,
            -(abs(d.difference_pct) if d.difference_pct is not None else float("inf")),
            d.period,
            d.subscription_id,
        )
    )
    flagged = [d for d in compared if d.flagged]
    return DiscrepancyReport(
        period=period,
        threshold_pct=threshold_pct,
        compared=len(compared),
        flagged=len(flagged),
        discrepancies=compared if include_all else flagged,
    )
