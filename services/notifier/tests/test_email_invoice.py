"""email_invoice through a real SMTP server (aiosmtpd) and the outbox, on the SQLite ledger."""

from __future__ import annotations

import email
import email.policy
import os
import stat
import uuid
from datetime import UTC, date, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from ispbill_core.clock import FixedClock
from ispbill_core.contracts.invoicing import InvoiceIssued, invoice_stream
from ispbill_core.events import RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from notifier.adapters.outbox import OutboxMailer
from notifier.adapters.smtp import NotifierDeliveryError, SmtpMailer, SmtpSettings
from notifier.application.email_invoice import SenderIdentity, email_invoice
from notifier.domain.events import InvoiceEmailed, invoice_notification_stream
from notifier.domain.messages import invoice_email
from tests.fixtures.smtp import free_port

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
SENT_AT = datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
SENDER = SenderIdentity(name="Example ISP", address="billing@isp.example")


class FixedDocuments:
    """The InvoiceDocuments port returning fixed PDF bytes; remembers what it rendered."""

    def __init__(self) -> None:
        self.rendered: list[uuid.UUID] = []

    async def invoice_pdf(self, invoice: InvoiceIssued) -> bytes:
        self.rendered.append(invoice.invoice_id)
        return PDF


def invoice_event() -> InvoiceIssued:
    total = Money.of("34.50", "USD")
    return InvoiceIssued(
        invoice_id=deterministic_id("invoice", "c-1", "2026-03"),
        number="INV-000007",
        customer_id="c-1",
        customer_name="Alice Rahman",
        customer_email="alice@example.com",
        period="2026-03",
        issued_at=datetime(2026, 4, 1, tzinfo=UTC),
        due_on=date(2026, 4, 15),
        currency="USD",
        lines=(),
        subtotal=Money.of("30.00", "USD"),
        taxes=(),
        tax_total=Money.of("4.50", "USD"),
        total=total,
    )


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


@pytest.fixture
async def issued(store) -> RecordedEvent:
    invoice = invoice_event()
    stream = invoice_stream(invoice.customer_id, invoice.period)
    await store.append(
        stream,
        [new_event(invoice, id=invoice.invoice_id, occurred_at=invoice.issued_at)],
        NO_STREAM,
    )
    [recorded] = await store.read_stream(stream)
    return recorded


def pdf_attachments(msg: EmailMessage) -> list[tuple[str | None, bytes]]:
    return [
        (part.get_filename(), part.get_content())
        for part in msg.iter_attachments()
        if part.get_content_type() == "application/pdf"
    ]


async def test_an_issued_invoice_is_emailed_once_with_its_pdf(store, issued, smtp_server) -> None:
    mailer = SmtpMailer(SmtpSettings(host=smtp_server.host, port=smtp_server.port, timeout=5))
    documents = FixedDocuments()
    clock = FixedClock(SENT_AT)

    emailed = await email_invoice(store, clock, documents, mailer, SENDER, issued)

    assert emailed is not None
    [msg] = smtp_server.messages
    assert "alice@example.com" in str(msg["To"])
    assert "billing@isp.example" in str(msg["From"])
    assert "INV-000007" in str(msg["Subject"]) and "34.50 USD" in str(msg["Subject"])
    assert pdf_attachments(msg) == [("INV-000007.pdf", PDF)]
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "2026-04-15" in body.get_content()

    [recorded] = await store.read_stream(invoice_notification_stream(issued.decode().invoice_id))
    event = recorded.decode()
    assert isinstance(event, InvoiceEmailed)
    assert event == emailed
    assert event.to == "alice@example.com"
    assert event.message_id == str(msg["Message-ID"])
    assert event.sent_at == SENT_AT
    assert recorded.metadata.causation_id == issued.id

    # The InvoiceIssued event delivered again (a subscriber restarted before its checkpoint).
    assert await email_invoice(store, clock, documents, mailer, SENDER, issued) is None
    assert len(smtp_server.messages) == 1
    assert len(documents.rendered) == 1


async def test_smtp_down_raises_and_records_nothing(store, issued) -> None:
    mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=free_port(), timeout=2))
    with pytest.raises(NotifierDeliveryError):
        await email_invoice(store, FixedClock(SENT_AT), FixedDocuments(), mailer, SENDER, issued)
    stream = invoice_notification_stream(issued.decode().invoice_id)
    assert await store.stream_version(stream) is None


class RefusingMailbox:
    def __init__(self) -> None:
        self.attempts = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options):
        self.attempts += 1
        return "550 5.1.1 mailbox unavailable"


async def test_a_refusing_smtp_server_raises_and_a_retry_sends(store, issued, smtp_server) -> None:
    refusing = RefusingMailbox()
    port = free_port()
    controller = Controller(refusing, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=port, timeout=5))
        with pytest.raises(NotifierDeliveryError):
            await email_invoice(
                store, FixedClock(SENT_AT), FixedDocuments(), mailer, SENDER, issued
            )
    finally:
        controller.stop()
    assert refusing.attempts == 1
    assert (
        await store.stream_version(invoice_notification_stream(issued.decode().invoice_id)) is None
    )
    # The subscriber retries the same event once the server takes mail again.
    good = SmtpMailer(SmtpSettings(host=smtp_server.host, port=smtp_server.port, timeout=5))
    assert await email_invoice(store, FixedClock(SENT_AT), FixedDocuments(), good, SENDER, issued)
    assert len(smtp_server.messages) == 1


async def test_the_outbox_writes_a_parseable_eml(tmp_path) -> None:
    outbox = tmp_path / "outbox"
    message = invoice_email(
        invoice_event(), PDF, sender_name=SENDER.name, sender_address=SENDER.address
    )
    old = os.umask(0o022)  # the usual umask: files would be world-readable without care
    try:
        await OutboxMailer(outbox).send(message)
    finally:
        os.umask(old)
    [path] = list(outbox.iterdir())
    assert path.suffix == ".eml"
    # Messages hold addresses and invoices: the outbox is its owner's alone.
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Message-ID"] == message["Message-ID"]
    assert "alice@example.com" in str(parsed["To"])
    assert pdf_attachments(parsed) == [("INV-000007.pdf", PDF)]


async def test_email_invoice_through_the_outbox_records_it_once(store, issued, tmp_path) -> None:
    outbox = tmp_path / "outbox"
    mailer = OutboxMailer(outbox)
    emailed = await email_invoice(
        store, FixedClock(SENT_AT), FixedDocuments(), mailer, SENDER, issued
    )
    assert emailed is not None
    assert (
        await email_invoice(store, FixedClock(SENT_AT), FixedDocuments(), mailer, SENDER, issued)
        is None
    )
    [path] = list(outbox.iterdir())
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert str(parsed["Message-ID"]) == emailed.message_id
