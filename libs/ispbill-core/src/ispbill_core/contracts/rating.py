"""Events rating publishes: usage attributed to a customer's billing period."""

from __future__ import annotations

import uuid

from pydantic import AwareDatetime, Field

from ispbill_core.events import DomainEvent, event_type


def usage_stream(customer_id: str, period: str) -> str:
    return f"usage-{customer_id}-{period}"


@event_type("UsageRated", 1)
class UsageRated(DomainEvent):
    """Bytes a session used since its previous record, attributed to a billing period."""

    customer_id: str
    subscription_id: str
    period: str
    session_key: str
    record_id: uuid.UUID
    input_octets: int = Field(ge=0)
    output_octets: int = Field(ge=0)
    occurred_at: AwareDatetime
