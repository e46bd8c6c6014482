"""Read side of invoicing: invoices with their status, and their PDFs."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from ispbill_core.contracts.invoicing import InvoiceIssued, InvoicePaid
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.queries import recorded_of_types

PdfRenderer = Callable[[InvoiceIssued, str], bytes]


class LedgerInvoiceQueries:
    """Answers from the ledger directly.

    It scans the InvoiceIssued and InvoicePaid events, which is fine for the thin path and a
    few thousand invoices; a projection with a checkpoint replaces it for large ISPs.
    """

    def __init__(self, store: EventStore, render_pdf: PdfRenderer) -> None:
        self._store = store
        self._render_pdf = render_pdf

    async def _all(self) -> list[tuple[InvoiceIssued, str]]:
        invoices: dict[uuid.UUID, InvoiceIssued] = {}
        paid: set[uuid.UUID] = set()
        for recorded in await recorded_of_types(
            self._store, InvoiceIssued.event_type, InvoicePaid.event_type
        ):
            event = recorded.decode()
            if isinstance(event, InvoiceIssued):
                invoices[event.invoice_id] = event
            elif isinstance(event, InvoicePaid):
                paid.add(event.invoice_id)
        return [(inv, "paid" if inv.invoice_id in paid else "issued") for inv in invoices.values()]

    async def get_invoice(self, invoice_id: uuid.UUID) -> tuple[InvoiceIssued, str] | None:
        for invoice, status in await self._all():
            if invoice.invoice_id == invoice_id:
                return invoice, status
        return None

    async def find(self, reference: str) -> tuple[InvoiceIssued, str] | None:
        """By invoice id or by number (what a clerk types)."""
        for invoice, status in await self._all():
            if str(invoice.invoice_id) == reference or invoice.number == reference:
                return invoice, status
        return None

    async def list_invoices(
        self, *, customer_id: str | None = None, period: str | None = None
    ) -> list[tuple[InvoiceIssued, str]]:
        return [
            (inv, status)
            for inv, status in await self._all()
            if (customer_id is None or inv.customer_id == customer_id)
            and (period is None or inv.period == period)
        ]

    async def invoice_pdf(self, invoice_id: uuid.UUID) -> bytes | None:
        found = await self.get_invoice(invoice_id)
        if found is None:
            return None
        invoice, status = found
        return self._render_pdf(invoice, status.upper())
