"""Events invoicing publishes: tax rules and exemptions, invoice numbers, issued and paid
invoices."""

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


def credit_note_series_stream(series: str) -> str:
    return f"credit-note-series-{series}"


def tax_region_stream(region: str) -> str:
    return f"tax-region-{region}"


#: Separates a tax region's levels: "BD", "BD.dhaka", "BD.dhaka.gulshan" (country, state,
#: district). A rule set on a level applies to every region under it (ADR 0029).
REGION_LEVEL_SEPARATOR = "."


def tax_region_levels(region: str) -> list[str]:
    """The region and every level above it, broadest first: "BD.dhaka.gulshan" gives
    ["BD", "BD.dhaka", "BD.dhaka.gulshan"]. Empty levels ("BD..x") are not levels."""
    parts = region.split(REGION_LEVEL_SEPARATOR)
    levels: list[str] = []
    for index, part in enumerate(parts):
        if not part:
            break
        levels.append(REGION_LEVEL_SEPARATOR.join(parts[: index + 1]))
    return levels or [region]


def tax_exemption_stream(customer_id: str) -> str:
    return f"tax-exemption-{customer_id}"


@event_type("TaxRateSet", 1)
class TaxRateSet(DomainEvent):
    """The simple form of a rule (`POST /api/v1/tax-rates`): one rate for the region, in force
    from the beginning, replaced by the region's next `TaxRateSet`. Read as a `TaxRuleSet`
    with tax code "rate" effective from the beginning (ADR 0029)."""

    region: str
    tax_name: str
    rate: Decimal = Field(ge=0, le=1)


@event_type("TaxRuleSet", 1)
class TaxRuleSet(DomainEvent):
    """A tax of a region level, in force from `effective_from` (a day in the ISP's time zone)
    until the same level's next rule or end for the same `tax_code`. It applies to every
    customer whose region is this level or under it; a deeper level's rule with the same code
    replaces it there (ADR 0029). Taxes are computed in `sequence` order; a `compound` tax is
    charged on the taxable value plus the taxes computed before it (VAT on a supplementary
    duty)."""

    region: str
    tax_code: str
    #: what the invoice calls it: "VAT", "Supplementary duty"
    name: str
    rate: Decimal = Field(ge=0, le=1)
    effective_from: date
    compound: bool = False
    sequence: int = Field(default=0, ge=0, le=1000)


@event_type("TaxRuleEnded", 1)
class TaxRuleEnded(DomainEvent):
    """From `effective_from` on, the level's rule for `tax_code` no longer applies (a broader
    level's rule for the code, if any, applies again)."""

    region: str
    tax_code: str
    effective_from: date


@event_type("TaxExemptionGranted", 1)
class TaxExemptionGranted(DomainEvent):
    """A customer exempt from some taxes (`tax_codes`; empty: from every tax) on the days
    from `valid_from` to `valid_until` (inclusive; None: open), on the strength of
    `certificate`, which every invoice it applies to prints. A grant with the same certificate
    replaces the earlier one."""

    customer_id: str
    certificate: str
    tax_codes: tuple[str, ...] = ()
    valid_from: date
    valid_until: date | None = None
    reason: str = ""


@event_type("TaxExemptionRevoked", 1)
class TaxExemptionRevoked(DomainEvent):
    """The exemption of `certificate` no longer applies from `effective_from` on."""

    customer_id: str
    certificate: str
    effective_from: date


class LineKind(StrEnum):
    RECURRING = "recurring"
    USAGE = "usage"
    #: a credit note's line: what it credits of the invoice
    CREDIT = "credit"
    #: usage of an earlier, already invoiced period, rated after that invoice (ADR 0032)
    USAGE_ADJUSTMENT = "usage_adjustment"


class InvoiceLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: LineKind
    description: str
    quantity: Decimal
    unit: str
    unit_price: Money
    #: the taxable value (net of tax); on a tax-inclusive line, what is left of
    #: `gross_amount` once the line's taxes are taken out
    amount: Money
    #: the plan's prices include tax: `unit_price` and `gross_amount` include it (ADR 0029)
    tax_inclusive: bool = False
    gross_amount: Money | None = None
    #: W3C traceparents of the RADIUS packets whose usage this line bills (audit and tracing)
    source_trace_ids: tuple[str, ...] = ()
    #: a usage adjustment's original: the invoice and period whose late usage it bills
    adjusts_invoice: str | None = None
    adjusts_period: str | None = None


class TaxLine(BaseModel):
    """The invoice's summary of one tax at one rate: its taxable value and amount. Fields
    after `amount` were added with defaults that describe an invoice issued before them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tax_name: str
    rate: Decimal
    taxable: Money
    amount: Money
    tax_code: str = ""
    #: the region level whose rule this is, and the rule's `effective_from` (the version an
    #: auditor re-derives the tax with)
    region: str = ""
    effective_from: date | None = None
    compound: bool = False
    #: exempt: `amount` is zero by this certificate (TaxExemptionGranted)
    exemption_certificate: str | None = None


@event_type("InvoiceNumberAssigned", 1)
class InvoiceNumberAssigned(DomainEvent):
    series: str
    sequence: int = Field(gt=0)
    number: str
    invoice_id: uuid.UUID
    customer_id: str
    period: str


class LateUsage(BaseModel):
    """Usage of an earlier period billed on this invoice: the usage stream of `period`
    (`usage-<customer>-<period>`) after position `billed_through` (what that period's invoice
    and earlier adjustments billed; -1: none of it) up to `usage_through` (ADR 0032)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    period: str
    invoice_id: uuid.UUID
    invoice_number: str
    billed_through: int = Field(ge=-1)
    usage_through: int = Field(ge=0)


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
    #: the customer's tax region when the invoice was issued ("": issued before this field)
    tax_region: str = ""
    #: the last position of the period's usage stream (`usage-<customer>-<period>`) this
    #: invoice billed; usage after it was rated late and is billed as an adjustment, never
    #: here. None: no usage was billed (or the invoice predates this field).
    usage_through: int | None = Field(default=None, ge=0)
    #: the settings the amounts were rounded with ("half_up" or "half_even"; tax "per_line"
    #: or "per_invoice"), so that `ispbill audit verify` re-derives the invoice as it was
    #: computed whatever the settings are today. None: issued before these fields.
    rounding: str | None = Field(default=None, max_length=20)
    tax_rounding: str | None = Field(default=None, max_length=20)
    #: late usage of earlier periods billed here, as `USAGE_ADJUSTMENT` lines (ADR 0032)
    late_usage: tuple[LateUsage, ...] = ()
    #: the customer's invoice language when issued ("": the template's default)
    language: str = Field(default="", pattern=r"^([a-z]{2,3})?$")


@event_type("LateUsageBilled", 1)
class LateUsageBilled(DomainEvent):
    """In an invoice's own stream: the usage of its period up to `usage_through` is now billed,
    its late part by the adjustment lines of invoice `on_invoice_number` (`amount`, before tax;
    zero when the late usage stayed within the included data). Appended in the same
    transaction as that invoice; the next bill run bills only what was rated after it."""

    invoice_id: uuid.UUID
    period: str
    usage_through: int = Field(ge=0)
    on_invoice_id: uuid.UUID
    on_invoice_number: str
    amount: Money


@event_type("LateUsageReleased", 1)
class LateUsageReleased(DomainEvent):
    """In an invoice's own stream: the invoice `on_invoice_number`, whose adjustment billed
    this period's late usage (a `LateUsageBilled` here), was voided; that usage counts as
    billed only up to `billed_through` again, so the next bill run bills it (ADR 0032).
    Appended in the same transaction as the void."""

    invoice_id: uuid.UUID
    period: str
    on_invoice_id: uuid.UUID
    on_invoice_number: str
    billed_through: int = Field(ge=-1)


def usage_billed_through(invoice: dict[str, object]) -> int | None:
    """How far an issued invoice (its data as recorded) billed its period's usage stream:
    its `usage_through`; -1 when it billed none; None for an invoice issued before invoices
    recorded that bound (no `rounding` either), whose late usage is not billed (ADR 0032)."""
    through = invoice.get("usage_through")
    if through is not None:
        return int(str(through))
    return -1 if invoice.get("rounding") is not None else None


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


@event_type("CreditNoteNumberAssigned", 1)
class CreditNoteNumberAssigned(DomainEvent):
    """The next number of a credit-note series (its own gapless series), in
    `credit-note-series-<series>`, appended in the same transaction as the credit note."""

    series: str
    sequence: int = Field(gt=0)
    number: str
    credit_note_id: uuid.UUID
    invoice_id: uuid.UUID
    customer_id: str


@event_type("CreditNoteIssued", 1)
class CreditNoteIssued(DomainEvent):
    """A credit note against an issued invoice, in the invoice's own stream: the invoice never
    changes, what is owed on it is its total less its credit notes. Amounts are positive (what
    is credited); `taxes` mirror the invoice's, one per tax and rate. `invoice_credited` is
    everything credited on the invoice once this one is added (never more than its total)."""

    credit_note_id: uuid.UUID
    number: str
    invoice_id: uuid.UUID
    invoice_number: str
    customer_id: str
    period: str
    issued_at: AwareDatetime
    reason: str
    #: the clerk's reference (ticket, letter): the same reference again is the same credit note
    reference: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Money
    taxes: tuple[TaxLine, ...]
    tax_total: Money
    total: Money
    invoice_credited: Money


@event_type("InvoiceVoided", 1)
class InvoiceVoided(DomainEvent):
    """An issued invoice cancelled before anything was paid or credited on it: nothing is owed
    on it. Its number stays used (the series stays gapless); a corrected invoice is a new one."""

    invoice_id: uuid.UUID
    number: str
    reason: str
    voided_at: AwareDatetime
