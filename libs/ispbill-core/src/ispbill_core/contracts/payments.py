"""Events payments publishes."""

from __future__ import annotations

import uuid

from pydantic import AwareDatetime, Field

from ispbill_core.events import DomainEvent, event_type
from ispbill_core.money import Money


def payment_stream(gateway: str, transaction_ref: str) -> str:
    """One stream per gateway transaction: a webhook delivered twice records one payment."""
    return f"payment-{gateway}-{transaction_ref}"


@event_type("PaymentReceived", 1)
class PaymentReceived(DomainEvent):
    payment_id: uuid.UUID
    gateway: str
    transaction_ref: str = Field(min_length=1)
    customer_id: str
    invoice_id: uuid.UUID | None = None
    amount: Money
    received_at: AwareDatetime
    method: str = "manual"
    #: the billing period of `invoice_id` (which, with the customer, names the invoice's
    #: stream): allocation reads that stream alone. None in payments recorded before it existed.
    invoice_period: str | None = None
