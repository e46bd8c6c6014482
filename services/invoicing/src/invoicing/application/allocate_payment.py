"""Reactor: a payment received against an invoice marks it paid once fully covered."""

from __future__ import annotations

from ispbill_core.access import system_actor
from ispbill_core.contracts.invoicing import InvoiceIssued, InvoicePaid, invoice_stream
from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.events import RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, EventStore
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.money import Money

#: What this records on its own carries this actor in its metadata.
ACTOR = system_actor("invoicing.allocate-payments")


async def allocate_payment(store: EventStore, recorded: RecordedEvent) -> InvoicePaid | None:
    """Idempotent: InvoicePaid's id is derived from the invoice, so it is recorded once."""
    payment = recorded.decode()
    assert isinstance(payment, PaymentReceived)
    if payment.invoice_id is None:
        return None
    invoice = await _issued(store, payment)
    if invoice is None:
        return None
    stream = invoice_stream(invoice.customer_id, invoice.period)
    events = await store.read_stream(stream)
    if any(e.type == InvoicePaid.event_type for e in events):
        return None
    received = Money.zero(invoice.currency)
    for p in await all_events_of(store, PaymentReceived):
        if p.invoice_id == invoice.invoice_id and p.amount.currency == invoice.currency:
            received = received + p.amount
    if received < invoice.total:
        return None
    paid = InvoicePaid(
        invoice_id=invoice.invoice_id,
        payment_id=payment.payment_id,
        amount_paid=received,
        paid_at=payment.received_at,
    )
    await store.append(
        stream,
        [
            new_event(
                paid,
                id=deterministic_id("invoice-paid", invoice.invoice_id),
                occurred_at=payment.received_at,
                causation_id=recorded.id,
                actor=ACTOR,
            )
        ],
        ANY,
    )
    return paid


async def _issued(store: EventStore, payment: PaymentReceived) -> InvoiceIssued | None:
    for invoice in await all_events_of(store, InvoiceIssued):
        if invoice.invoice_id == payment.invoice_id:
            return invoice
    return None
