"""Use case: record a manual payment against an invoice, once per reference."""

from __future__ import annotations

from decimal import InvalidOperation
from typing import Protocol

from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.contracts.payments import PaymentReceived, payment_stream
from ispbill_core.events import new_event
from ispbill_core.eventstore import NO_STREAM, EventStore, WrongExpectedVersion
from ispbill_core.input_policy import money_in
from ispbill_core.money import Money
from payments.domain.commands import RecordManualPayment, payment_received
from payments.domain.errors import DuplicatePaymentReference, InvalidPayment

MANUAL_GATEWAY = "manual"


class InvoiceLookup(Protocol):
    async def find(self, reference: str) -> tuple[InvoiceIssued, str] | None: ...


async def record_manual_payment(
    store: EventStore, clock: Clock, invoices: InvoiceLookup, cmd: RecordManualPayment, actor: str
) -> PaymentReceived:
    found = await invoices.find(cmd.invoice)
    if found is None:
        raise InvalidPayment(f"no invoice {cmd.invoice!r}")
    invoice, _status = found
    try:
        amount = money_in(cmd.amount, invoice.currency)
    except InvalidOperation:
        raise InvalidPayment(f"amount {cmd.amount!r} is not a decimal number") from None
    except ValueError as exc:
        raise InvalidPayment(f"amount {cmd.amount!r}: {exc}") from None
    if amount.amount <= 0:
        raise InvalidPayment("a payment amount must be positive")
    stream = payment_stream(MANUAL_GATEWAY, cmd.reference)
    existing = await store.read_stream(stream, limit=1)
    if existing:
        return _same_payment(existing[0].decode(), invoice, amount, cmd.reference)
    payment = payment_received(
        gateway=MANUAL_GATEWAY,
        reference=cmd.reference,
        customer_id=invoice.customer_id,
        invoice_id=invoice.invoice_id,
        invoice_period=invoice.period,
        amount=amount,
        method=cmd.method,
        received_at=clock.now(),
    )
    try:
        await store.append(
            stream,
            [
                new_event(
                    payment, id=payment.payment_id, occurred_at=payment.received_at, actor=actor
                )
            ],
            NO_STREAM,
        )
    except WrongExpectedVersion:
        raise DuplicatePaymentReference(f"reference {cmd.reference!r} was just used") from None
    # The event id derives from the reference alone, so when a concurrent entry of the same
    # reference got there first the append was a silent no-op: answer with what was recorded.
    recorded = await store.read_stream(stream, limit=1)
    return _same_payment(recorded[0].decode(), invoice, amount, cmd.reference)


def _same_payment(
    prior: object, invoice: InvoiceIssued, amount: Money, reference: str
) -> PaymentReceived:
    assert isinstance(prior, PaymentReceived)
    if prior.invoice_id == invoice.invoice_id and prior.amount == amount:
        return prior  # the same payment entered twice: recorded once
    raise DuplicatePaymentReference(f"reference {reference!r} was used for another payment")
