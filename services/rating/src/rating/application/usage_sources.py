"""Which source bills a subscription's usage: the one its `usage_source` names (accounts;
"radius" unless the subscription was started as measured by router counters). The other
source's usage of it is kept as UsageMeasured, compared but never billed, so a subscriber seen
by both RADIUS and a router is billed once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.events import deterministic_id
from rating.domain.events import UsageMeasured

if TYPE_CHECKING:
    from rating.application.rate_accounting_record import Tariffs


def measured_usage_stream(customer_id: str, period: str) -> str:
    """Usage of a customer's subscriptions measured by the source that does not bill them."""
    return f"measured-usage-{customer_id}-{period}"


def billing_source(tariffs: Tariffs | None) -> str:
    """The source whose usage is billed; RADIUS for a subscription not (yet) recorded."""
    return tariffs.history.usage_source if tariffs is not None else "radius"


def billed_or_measured(
    tariffs: Tariffs | None, pieces: Sequence[tuple[uuid.UUID, UsageRated]]
) -> list[tuple[str, uuid.UUID, UsageRated | UsageMeasured]]:
    """(stream, event id, event) for each piece of `usage_pieces`: the piece itself, to the
    customer's usage stream, when its source bills the subscription; else the same bytes as
    UsageMeasured, to the measured-usage stream, with an id derived from the piece's."""
    billed_by = billing_source(tariffs)
    kept: list[tuple[str, uuid.UUID, UsageRated | UsageMeasured]] = []
    for usage_id, usage in pieces:
        if usage.source == billed_by:
            kept.append((usage_stream(usage.customer_id, usage.period), usage_id, usage))
            continue
        measured = UsageMeasured(
            customer_id=usage.customer_id,
            subscription_id=usage.subscription_id,
            period=usage.period,
            session_key=usage.session_key,
            record_id=usage.record_id,
            input_octets=usage.input_octets,
            output_octets=usage.output_octets,
            occurred_at=usage.occurred_at,
            started_at=usage.started_at,
            source=usage.source,
            billed_by="router" if billed_by == "router" else "radius",
        )
        kept.append(
            (
                measured_usage_stream(usage.customer_id, usage.period),
                deterministic_id("usage-measured", usage_id),
                measured,
            )
        )
    return kept
