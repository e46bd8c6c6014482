"""Reactor: a payment received against an invoice is allocated to it; once the invoice has
received its total less its credit notes, it is marked paid. A void invoice, or one credited
in full, takes no payment (it stays unallocated, with the payments).

Everything is decided from the invoice's own stream (InvoiceIssued, the PaymentAllocated so
far, InvoicePaid), appended to at the version read: no scan of every payment and invoice per
payment, and two allocations racing on one invoice cannot both count (the loser retries).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from ispbill_core.access import system_actor
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoicePaid,
    InvoiceVoided,
    PaymentAllocated,
    invoice_stream,
)
from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.events import NewEvent, RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import EventStore
from ispbill_core.money import Money
from ispbill_core.subscriber import TransientError

#: What this records on its own carries this actor in its metadata.
ACTOR = system_actor("invoicing.allocate-payments")


class InvoiceLocator(Protocol):
    async def period_of(self, invoice_id: uuid.UUID) -> str | None:
        """The period of a known invoice (from the invoices read model), None if unknown."""


async def allocate_payment(
    store: EventStore, recorded: RecordedEvent, invoices: InvoiceLocator | None = None
) -> InvoicePaid | None:
    """Idempotent: a redelivered payment finds its allocation in the stream and changes
    nothing. Ids derive from the payment, the invoice and the stream version read, so the same
    attempt retried is a no-op, and an attempt based on a stale read fails its expected version
    (and is retried) rather than half-matching another attempt's ids."""
    payment = recorded.decode()
    assert isinstance(payment, PaymentReceived)
    if payment.invoice_id is None:
        return None
    period = payment.invoice_period
    if period is None:
        # a payment recorded before payments named the invoice's period
        period = await invoices.period_of(payment.invoice_id) if invoices is not None else None
        if period is None:
            raise TransientError(f"invoice {payment.invoice_id} is not in the read model yet")
    stream = invoice_stream(payment.customer_id, period)
    history = await store.read_stream(stream)
    if not history:
        return None  # no such invoice: the payment stays unallocated (listed with payments)
    invoice: InvoiceIssued | None = None
    received: Money | None = None
    credited: Money | None = None
    for event in history:
        decoded = event.decode()
        if isinstance(decoded, InvoiceIssued):
            invoice = decoded
        elif isinstance(decoded, PaymentAllocated):
            if decoded.payment_id == payment.payment_id:
                return None  # allocated before: a redelivery
            received = decoded.amount_received
        elif isinstance(decoded, InvoicePaid):
            return None  # a paid invoice is not paid again (overpayment: the payments issue)
        elif isinstance(decoded, InvoiceVoided):
            return None  # nothing is owed on a void invoice (the payment stays unallocated)
        elif isinstance(decoded, CreditNoteIssued):
            credited = decoded.invoice_credited
    if invoice is None or invoice.invoice_id != payment.invoice_id:
        return None
    if payment.amount.currency != invoice.currency:
        raise ValueError(
            f"payment {payment.payment_id} is in {payment.amount.currency}, invoice"
            f" {invoice.number} in {invoice.currency}"
        )
    owed = invoice.total - (credited or Money.zero(invoice.currency))
    if owed.amount <= 0:
        return None  # credited in full: nothing is owed (the payment stays unallocated)
    version = history[-1].stream_position
    received = (received or Money.zero(invoice.currency)) + payment.amount
    allocation = PaymentAllocated(
        invoice_id=invoice.invoice_id,
        payment_id=payment.payment_id,
        amount=payment.amount,
        amount_received=received,
        allocated_at=payment.received_at,
    )
    events: list[NewEvent] = [
        new_event(
            allocation,
            id=deterministic_id(
                "payment-allocated", payment.payment_id, invoice.invoice_id, version
            ),
            occurred_at=payment.received_at,
            actor=ACTOR,
            causation_id=recorded.id,
        )
    ]
    paid: InvoicePaid | None = None
    if received >= owed:
        paid = InvoicePaid(
            invoice_id=invoice.invoice_id,
            payment_id=payment.payment_id,
            amount_paid=received,
            paid_at=payment.received_at,
        )
        events.append(
            new_event(
                paid,
                id=deterministic_id(
                    "invoice-paid", invoice.invoice_id, payment.payment_id, version
                ),
                occurred_at=payment.received_at,
                actor=ACTOR,
                causation_id=recorded.id,
            )
        )
    # at the version read: a concurrent allocation makes this one retry (WrongExpectedVersion
    # is transient for the subscriber) and then count both
    await store.append(stream, events, version)
    return paid
