"""Reactor: e-mail each issued invoice to its customer, with the PDF attached, once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from opentelemetry import trace

from ispbill_core.access import system_actor
from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.events import RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM, EventStore, WrongExpectedVersion
from notifier.domain.events import InvoiceEmailed, invoice_notification_stream
from notifier.domain.messages import invoice_email

#: What this records on its own carries this actor in its metadata.
ACTOR = system_actor("notifier.email-invoices")

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ispbill.notifier")


class InvoiceDocuments(Protocol):
    async def invoice_pdf(self, invoice: InvoiceIssued) -> bytes: ...


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True)
class SenderIdentity:
    name: str
    address: str


async def email_invoice(
    store: EventStore,
    clock: Clock,
    documents: InvoiceDocuments,
    mailer: Mailer,
    sender: SenderIdentity,
    recorded: RecordedEvent,
) -> InvoiceEmailed | None:
    """At most one e-mail per invoice, except after a crash between sending and recording."""
    invoice = recorded.decode()
    assert isinstance(invoice, InvoiceIssued)
    stream = invoice_notification_stream(invoice.invoice_id)
    if await store.stream_version(stream) is not None:
        return None
    with tracer.start_as_current_span(
        "notifier.email_invoice", attributes={"invoice.number": invoice.number}
    ):
        pdf = await documents.invoice_pdf(invoice)
        message = invoice_email(
            invoice, pdf, sender_name=sender.name, sender_address=sender.address
        )
        await mailer.send(message)
        emailed = InvoiceEmailed(
            invoice_id=invoice.invoice_id,
            number=invoice.number,
            to=invoice.customer_email,
            message_id=str(message["Message-ID"]),
            sent_at=clock.now(),
        )
        try:
            await store.append(
                stream,
                [
                    new_event(
                        emailed,
                        id=deterministic_id("invoice-emailed", invoice.invoice_id),
                        occurred_at=emailed.sent_at,
                        causation_id=recorded.id,
                        actor=ACTOR,
                    )
                ],
                NO_STREAM,
            )
        except WrongExpectedVersion:
            log.warning("invoice %s was e-mailed twice (concurrent notifiers)", invoice.number)
        return emailed
