"""The invoice e-mail composer: pure, data in, message out."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, date, datetime
from email.headerregistry import Address
from email.message import EmailMessage

import pytest

from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.events import deterministic_id
from ispbill_core.money import Money
from notifier.domain.messages import invoice_email

pytestmark = pytest.mark.unit


def invoice(name: str = "Alice Rahman", email_address: str = "alice@example.com") -> InvoiceIssued:
    return InvoiceIssued(
        invoice_id=deterministic_id("invoice", "c-1", "2026-03"),
        number="INV-000007",
        customer_id="c-1",
        customer_name=name,
        customer_email=email_address,
        period="2026-03",
        issued_at=datetime(2026, 4, 1, tzinfo=UTC),
        due_on=date(2026, 4, 15),
        currency="USD",
        lines=(),
        subtotal=Money.of("30.00", "USD"),
        taxes=(),
        tax_total=Money.of("4.50", "USD"),
        total=Money.of("34.50", "USD"),
    )


def roundtrip(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.mark.parametrize("name", ["Alice Rahman", "Rahman, Alice", 'Ålice "Ally" Rähman'])
def test_the_recipient_survives_names_with_commas_quotes_and_accents(name: str) -> None:
    msg = roundtrip(
        invoice_email(invoice(name), b"%PDF", sender_name="ISP", sender_address="b@isp.example")
    )
    [address] = msg["To"].addresses
    assert address == Address(display_name=name, addr_spec="alice@example.com")


def test_the_message_names_the_invoice_amount_and_due_date() -> None:
    msg = roundtrip(
        invoice_email(
            invoice(), b"%PDF-1.4", sender_name="Example ISP", sender_address="b@isp.example"
        )
    )
    assert msg["Subject"] == "Invoice INV-000007 for 2026-03: 34.50 USD"
    assert msg["Message-ID"].endswith("@isp.example>")
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert "34.50 USD" in text and "2026-04-15" in text
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "INV-000007.pdf"
    assert attachment.get_content() == b"%PDF-1.4"


def test_each_message_has_its_own_message_id() -> None:
    ids = {
        invoice_email(invoice(), b"", sender_name="ISP", sender_address="b@isp.example")[
            "Message-ID"
        ]
        for _ in range(5)
    }
    assert len(ids) == 5
