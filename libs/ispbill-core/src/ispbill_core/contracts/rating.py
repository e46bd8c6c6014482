"""Events rating publishes: usage attributed to a customer's billing period."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, Field

from ispbill_core.events import DomainEvent, event_type


def usage_stream(customer_id: str, period: str) -> str:
    return f"usage-{customer_id}-{period}"


@event_type("UsageRated", 1)
class UsageRated(DomainEvent):
    """Bytes a session used since its previous record, in one bucket: the subscription, the
    billing period (a month in the ISP's time zone), the plan version in force that day, the
    time band of the plan, and whether the day was suspended or on hold.

    A record whose usage spans a boundary (local midnight at a period's end, a plan change or
    suspension day, a band's start or end) is rated as one UsageRated per bucket, the bytes
    split in proportion to time (rating's README: "Buckets"). `started_at` and `occurred_at`
    are the piece's first and last moment: a piece cut at a boundary ends 1 microsecond
    before it, so both lie in the bucket. The fields after `occurred_at` were added with
    defaults that describe usage rated before buckets (one piece, standard time).
    """

    customer_id: str
    subscription_id: str
    period: str
    session_key: str
    record_id: uuid.UUID
    input_octets: int = Field(ge=0)
    output_octets: int = Field(ge=0)
    occurred_at: AwareDatetime
    started_at: AwareDatetime | None = None
    #: the plan's time band the piece fell in ("" outside every band, or a plan without bands)
    band: str = ""
    plan_id: str | None = None
    plan_version: int | None = Field(default=None, ge=1)
    #: the day was one the subscription was suspended or on a vacation hold
    suspended: bool = False
    #: what measured it: RADIUS accounting, or a router's counters (no RADIUS for the subscriber)
    source: Literal["radius", "router"] = "radius"
    #: the period was invoiced already when this was rated: it is billed as an adjustment.
    #: Invoicing decides by position, not by this mark (`InvoiceIssued.usage_through`).
    late: bool = False

    @property
    def total_octets(self) -> int:
        return self.input_octets + self.output_octets


def tariff_stream(subscription_id: str, period: str) -> str:
    """A subscription's tariff events of one billing period (thresholds reached)."""
    return f"tariff-{subscription_id}-{period}"


@event_type("QuotaThresholdReached", 1)
class QuotaThresholdReached(DomainEvent):
    """A subscription's counted usage in a period reached `percent` (80 or 100) of its
    allowance: the plan version's included data plus the data of the top-ups valid at that
    moment. Emitted once per subscription, period and percent, however often the usage is
    replayed; a top-up bought later does not emit it again. For the notifier and the network."""

    subscription_id: str
    customer_id: str
    period: str
    percent: int = Field(ge=1, le=100)
    used_octets: int = Field(ge=0)
    allowance_octets: int = Field(ge=0)
    reached_at: AwareDatetime


@event_type("FairUsageLimitReached", 1)
class FairUsageLimitReached(DomainEvent):
    """A subscription's counted usage in a period passed a fair-usage limit of its plan
    version (`limit_octets`; `after_octets` is that limit raised by the data of the top-ups
    valid then): from
    `reached_at` until the period ends, the network throttles it to `rate_limit`. Once per
    subscription, period and limit."""

    subscription_id: str
    customer_id: str
    period: str
    #: the plan version's limit (`FairUsageThreshold.after_bytes`)
    limit_octets: int = Field(ge=0)
    after_octets: int = Field(ge=0)
    rate_limit: str
    used_octets: int = Field(ge=0)
    reached_at: AwareDatetime
