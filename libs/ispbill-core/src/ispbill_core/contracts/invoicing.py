"""Events invoicing publishes: tax rates, invoice numbers, issued and paid invoices."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ispbill_core.events import DomainEvent, event_type
from ispbill_core.money import Money


def invoice_stream(customer_id: str, period: str) -> str:
    """One stream per customer and period; created with NO_STREAM, so never two invoices."""
    return f"invoice-{customer_id}-{period}"


def invoice_series_stream(series: str) -> str:
    return f"invoice-series-{series}"


def tax_region_stream(region: str) -> str:
    return f"tax-region-{region}"


@event_type("TaxRateSet", 1)
class TaxRateSet(DomainEvent):
    region: str
    tax_name: str
    rate: Decimal = Field(ge=0, le=1)


class LineKind(StrEnum):
    RECURRING = "recurring"
    USAGE = "usage"


class InvoiceLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: LineKind
    description: str
    quantity: Decimal
    unit: str
    unit_price: Money
    amount: Money
    #: W3C traceparents of the RADIUS packets whose usage this line bills (audit and tracing)
    source_trace_ids: tuple[str, ...] = ()


class TaxLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tax_name: str
    rate: Decimal
    taxable: Money
    amount: Money


@event_type("InvoiceNumberAssigned", 1)
class InvoiceNumberAssigned(DomainEvent):
    series: str
    sequence: int = Field(gt=0)
    number: str
    invoice_id: uuid.UUID
    customer_id: str
    period: str


@event_type("InvoiceIssued", 1)
class InvoiceIssued(DomainEvent):
    invoice_id: uuid.UUID
    number: str
    customer_id: str
    customer_name: str
    customer_email: str
    billing_address: str = ""
    period: str
    issued_at: AwareDatetime
    due_on: date
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Money
    taxes: tuple[TaxLine, ...]
    tax_total: Money
    total: Money
    #: the last position of the period's usage stream (`usage-<customer>-<period>`) this
    #: invoice billed; usage after it was rated late and is billed as an adjustment, never
    #: here. None: no usage was billed (or the invoice predates this field).
    usage_through: int | None = Field(default=None, ge=0)


@event_type("InvoicePaid", 1)
class InvoicePaid(DomainEvent):
    invoice_id: uuid.UUID
    payment_id: uuid.UUID
    amount_paid: Money
    paid_at: AwareDatetime


@event_type("PaymentAllocated", 1)
class PaymentAllocated(DomainEvent):
    """Part or all of a payment applied to an invoice, in the invoice's own stream: what the
    invoice has received is the sum of these, read from that stream alone (no scan of every
    payment). `amount_received` is that sum once this one is added."""

    invoice_id: uuid.UUID
    payment_id: uuid.UUID
    amount: Money
    amount_received: Money
    allocated_at: AwareDatetime
