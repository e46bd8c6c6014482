"""Composes the e-mails the notifier sends. Pure: data in, message out."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formataddr, make_msgid

from ispbill_core.contracts.invoicing import InvoiceIssued


def invoice_email(
    invoice: InvoiceIssued, pdf: bytes, *, sender_name: str, sender_address: str
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr((sender_name, sender_address))
    msg["To"] = formataddr((invoice.customer_name, invoice.customer_email))
    msg["Subject"] = f"Invoice {invoice.number} for {invoice.period}: {invoice.total}"
    msg["Message-ID"] = make_msgid(idstring=invoice.number, domain=sender_address.split("@")[-1])
    msg.set_content(
        f"Dear {invoice.customer_name},\n\n"
        f"your invoice {invoice.number} for {invoice.period} is attached.\n"
        f"Amount due: {invoice.total}, by {invoice.due_on.isoformat()}.\n\n"
        f"{sender_name}\n"
    )
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{invoice.number}.pdf")
    return msg
