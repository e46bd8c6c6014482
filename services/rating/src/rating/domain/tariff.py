"""Tariff state in real time: a subscription's counted usage in a billing period, and the
thresholds it reaches. Pure: usage, the plan version it was rated on and the subscription's
top-ups in; the events to emit out.

The rules (rating's README, "Quota, fair usage and top-ups"):
- usage counts as its band says (`ispbill_core.time_bands.counted_octets`: a free night band
  counts nothing), input and output together, whether or not the day was suspended;
- the allowance at a moment is the plan version's included data plus the data of every top-up
  valid at that moment (`valid_from` <= t < `valid_until`); a plan without included data has
  no quota thresholds;
- QuotaThresholdReached is emitted when the period's counted usage reaches 80 % and 100 % of
  the allowance at the usage's time, each once per subscription and period;
- a fair-usage limit of the plan version (`after_bytes`), raised by the same top-up data, emits
  FairUsageLimitReached once per subscription, period and limit, with the throttled rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ispbill_core.contracts.accounts import PlanTerms
from ispbill_core.contracts.rating import (
    FairUsageLimitReached,
    QuotaThresholdReached,
    UsageRated,
)
from ispbill_core.time_bands import counted_octets

__all__ = ["QUOTA_THRESHOLDS", "PeriodTariff", "TopUp", "counted", "threshold_key"]

QUOTA_THRESHOLDS = (80, 100)


@dataclass(frozen=True)
class TopUp:
    purchase_id: str
    bytes: int
    valid_from: datetime
    valid_until: datetime

    def valid_at(self, moment: datetime) -> bool:
        return self.valid_from <= moment < self.valid_until


def counted(usage: UsageRated, plan: PlanTerms | None) -> int:
    """The usage's bytes as they count against the allowance."""
    return counted_octets(plan.time_bands if plan else (), usage.band, usage.total_octets)


def threshold_key(event: QuotaThresholdReached | FairUsageLimitReached) -> str:
    """What makes a threshold event once-only within its subscription and period."""
    if isinstance(event, QuotaThresholdReached):
        return f"quota-{event.percent}"
    return f"fair-usage-{event.limit_octets}"


@dataclass
class PeriodTariff:
    """One subscription's counted usage in one period, and the thresholds already reached."""

    used: int = 0
    reached: set[str] = field(default_factory=set)
    #: the ledger position of the last usage counted (a usage at or before it is not again)
    position: int = 0

    def add(
        self, usage: UsageRated, plan: PlanTerms | None, topups: Sequence[TopUp]
    ) -> list[QuotaThresholdReached | FairUsageLimitReached]:
        self.used += counted(usage, plan)
        if plan is None:
            return []
        at = usage.occurred_at
        extra = sum(t.bytes for t in topups if t.valid_at(at))
        allowance = plan.included_bytes + extra
        emitted: list[QuotaThresholdReached | FairUsageLimitReached] = []
        if plan.included_bytes > 0:
            for percent in QUOTA_THRESHOLDS:
                key = f"quota-{percent}"
                if key not in self.reached and self.used * 100 >= allowance * percent:
                    self.reached.add(key)
                    emitted.append(
                        QuotaThresholdReached(
                            subscription_id=usage.subscription_id,
                            customer_id=usage.customer_id,
                            period=usage.period,
                            percent=percent,
                            used_octets=self.used,
                            allowance_octets=allowance,
                            reached_at=at,
                        )
                    )
        for limit in plan.fair_usage:
            key = f"fair-usage-{limit.after_bytes}"
            if key not in self.reached and self.used >= limit.after_bytes + extra:
                self.reached.add(key)
                emitted.append(
                    FairUsageLimitReached(
                        subscription_id=usage.subscription_id,
                        customer_id=usage.customer_id,
                        period=usage.period,
                        limit_octets=limit.after_bytes,
                        after_octets=limit.after_bytes + extra,
                        rate_limit=limit.rate_limit,
                        used_octets=self.used,
                        reached_at=at,
                    )
                )
        return emitted
