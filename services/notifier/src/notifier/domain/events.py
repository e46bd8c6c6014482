"""Events the notifier keeps to itself: what it sent, so a redelivered event sends nothing."""

from __future__ import annotations

import uuid

from pydantic import AwareDatetime

from ispbill_core.events import DomainEvent, event_type


def invoice_notification_stream(invoice_id: uuid.UUID) -> str:
    return f"notification-invoice-{invoice_id}"


@event_type("InvoiceEmailed", 1)
class InvoiceEmailed(DomainEvent):
    invoice_id: uuid.UUID
    number: str
    to: str
    message_id: str
    sent_at: AwareDatetime
