"""Corrections, pure: an invoice's account (folded from its stream), the credit note that
credits part or all of it, and whether it may be voided.

Issued invoices never change. A credit note credits an amount of an invoice (tax included).
Each tax (and its taxable value) is split by cumulative rounding: once the note is added, the
invoice's credit notes have credited in all the share (everything credited / the invoice's
total) of the invoice's tax, rounded; the note takes the difference from what earlier notes
credited, and its taxable value is its amount less its taxes. So no tax is ever credited beyond
the invoice's or below zero, and the note that credits what is left takes exactly what is left
of each part: an invoice's credit notes add up to it to the minor unit and never exceed it. A
note of a few minor units whose rounded taxes would pass its amount leaves the excess of its
last taxes to the next note.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, localcontext

from invoicing.domain.errors import InvoicingError
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoiceLine,
    InvoicePaid,
    InvoiceVoided,
    LineKind,
    PaymentAllocated,
    TaxLine,
)
from ispbill_core.events import DomainEvent
from ispbill_core.money import Money, Rounding

_PRECISION = 50


class CorrectionRefused(InvoicingError):
    """A credit note or void the invoice's state does not allow."""


@dataclass
class InvoiceAccount:
    """An invoice and what happened to it since: payments, credit notes, a void."""

    invoice: InvoiceIssued
    credit_notes: list[CreditNoteIssued] = field(default_factory=list)
    received: Decimal = Decimal(0)
    paid: bool = False
    last_payment_id: uuid.UUID | None = None
    voided: InvoiceVoided | None = None

    @property
    def currency(self) -> str:
        return self.invoice.currency

    @property
    def credited(self) -> Money:
        return sum((c.total for c in self.credit_notes), Money.zero(self.currency))

    @property
    def creditable(self) -> Money:
        """What credit notes may still credit: the total less what they credited."""
        return self.invoice.total - self.credited

    @property
    def due(self) -> Money:
        """What is still owed: the total less credit notes and payments (never below 0)."""
        left = self.creditable.amount - self.received
        return Money.exact(max(left, Decimal(0)), self.currency)

    def credited_tax(self, tax: TaxLine) -> tuple[Decimal, Decimal]:
        """(taxable, amount) of `tax` credited so far."""
        taxable = amount = Decimal(0)
        for note in self.credit_notes:
            for credited in note.taxes:
                if _tax_key(credited) == _tax_key(tax):
                    taxable += credited.taxable.amount
                    amount += credited.amount.amount
        return taxable, amount


def fold_invoice(events: Iterable[DomainEvent]) -> InvoiceAccount | None:
    """The account of the invoice an invoice stream holds (None: no invoice in it)."""
    account: InvoiceAccount | None = None
    for event in events:
        if isinstance(event, InvoiceIssued):
            account = InvoiceAccount(event)
        elif account is None:
            continue
        elif isinstance(event, PaymentAllocated):
            account.received = event.amount_received.amount
            account.last_payment_id = event.payment_id
        elif isinstance(event, InvoicePaid):
            account.paid = True
        elif isinstance(event, CreditNoteIssued):
            account.credit_notes.append(event)
        elif isinstance(event, InvoiceVoided):
            account.voided = event
    return account


@dataclass(frozen=True)
class CreditDraft:
    lines: tuple[InvoiceLine, ...]
    subtotal: Money
    taxes: tuple[TaxLine, ...]
    tax_total: Money
    total: Money


def draft_credit_note(
    account: InvoiceAccount,
    amount: Money | None,
    reason: str,
    rounding: Rounding = Rounding.HALF_UP,
) -> CreditDraft:
    """The credit note crediting `amount` (tax included) of the invoice, or everything still
    creditable (None). Refused: a void invoice, nothing left to credit, an amount of zero or
    less, above what is left, or in another currency."""
    invoice = account.invoice
    currency = invoice.currency
    if account.voided is not None:
        raise CorrectionRefused(f"invoice {invoice.number} is void: nothing to credit")
    left = account.creditable
    if left.amount <= 0:
        raise CorrectionRefused(f"invoice {invoice.number} is credited in full already")
    if amount is not None:
        if amount.currency != currency:
            raise CorrectionRefused(
                f"invoice {invoice.number} is in {currency}, the credit in {amount.currency}"
            )
        if amount.amount <= 0:
            raise CorrectionRefused("a credit note credits an amount above zero")
        if amount > left:
            raise CorrectionRefused(
                f"a credit of {amount.amount} {currency} is more than the {left.amount}"
                f" {currency} invoice {invoice.number} has left to credit"
            )
    gross = left if amount is None else amount
    whole = gross == left  # the last credit: exactly what is left of every part
    # Cumulative rounding: after this note, each part credited in all is that share of the
    # invoice's part, rounded; this note takes the difference. So no part is ever credited
    # beyond the invoice's, none goes negative, and the last note leaves nothing.
    after = account.credited.amount + gross.amount
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        share = after / invoice.total.amount
        taxes = []
        for tax in invoice.taxes:
            taxable_before, amount_before = account.credited_tax(tax)
            parts = []
            for whole_part, before in (
                (tax.taxable.amount, taxable_before),
                (tax.amount.amount, amount_before),
            ):
                target = Money.rounded(whole_part * share, currency, rounding).amount
                part = min(max(target - before, Decimal(0)), whole_part - before)
                parts.append(whole_part - before if whole else part)
            taxes.append(
                tax.model_copy(
                    update={
                        "taxable": Money.exact(parts[0], currency),
                        "amount": Money.exact(parts[1], currency),
                    }
                )
            )
        excess = sum((t.amount.amount for t in taxes), Decimal(0)) - gross.amount
        for index in reversed(range(len(taxes))):
            # a note of a few minor units whose taxes round up past it: the last taxes wait
            # for the next note (its cumulative share catches them up)
            if excess <= 0:
                break
            cut = min(excess, taxes[index].amount.amount)
            taxes[index] = taxes[index].model_copy(
                update={"amount": Money.exact(taxes[index].amount.amount - cut, currency)}
            )
            excess -= cut
        tax_total = sum((t.amount for t in taxes), Money.zero(currency))
        subtotal = gross - tax_total
    if whole and not account.credit_notes:
        # the whole invoice: its own lines, each credited
        lines = tuple(
            line.model_copy(
                update={"kind": LineKind.CREDIT, "description": f"Credit: {line.description}"}
            )
            for line in invoice.lines
        )
    else:
        lines = (_credit_line(invoice, subtotal, reason),)
    return CreditDraft(
        lines=lines, subtotal=subtotal, taxes=tuple(taxes), tax_total=tax_total, total=gross
    )


def check_void(account: InvoiceAccount) -> None:
    """An invoice may be voided only while nothing was paid or credited on it."""
    number = account.invoice.number
    if account.voided is not None:
        return  # voided already: the caller answers with the void recorded
    if account.paid or account.received > 0:
        raise CorrectionRefused(
            f"invoice {number} has payments: credit it (a credit note) instead of voiding it"
        )
    if account.credit_notes:
        raise CorrectionRefused(
            f"invoice {number} has credit notes: credit the rest instead of voiding it"
        )


def _credit_line(invoice: InvoiceIssued, subtotal: Money, reason: str) -> InvoiceLine:
    return InvoiceLine(
        kind=LineKind.CREDIT,
        description=f"Credit of invoice {invoice.number}: {reason}",
        quantity=Decimal(1),
        unit="credit",
        unit_price=subtotal,
        amount=subtotal,
    )


def _tax_key(tax: TaxLine) -> tuple[str, str, str, str, str | None]:
    return (tax.tax_code, tax.tax_name, str(tax.rate), tax.region, tax.exemption_certificate)
