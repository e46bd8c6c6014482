"""Use case: the tax report of a billing period, per region and rate (`ispbill reports tax`).

One row per (currency, customer region, tax code, rate, jurisdiction): how many invoices and
credit notes, the taxable value and the tax charged, and the taxable value exempted (by
certificate). The jurisdiction is the region level whose rule the tax is ("BD" for a national
VAT), what an ISP files per authority; the customer region is where its customers are. A void
invoice counts for nothing; a credit note is taken off the period of the invoice it credits
(its own tax summary, negative). Figures are the documents' own tax summaries, to the minor
unit, never recomputed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from invoicing.application.csv_export import csv_text
from ispbill_core.contracts.invoicing import CreditNoteIssued, InvoiceIssued, TaxLine
from ispbill_core.money import quantize

CSV_COLUMNS = (
    "period",
    "currency",
    "customer_region",
    "jurisdiction",
    "tax_code",
    "tax_name",
    "rate",
    "invoices",
    "credit_notes",
    "taxable",
    "tax",
    "exempt_taxable",
)


@dataclass
class TaxReportRow:
    period: str
    currency: str
    customer_region: str
    jurisdiction: str
    tax_code: str
    tax_name: str
    rate: Decimal
    invoices: int = 0
    credit_notes: int = 0
    taxable: Decimal = Decimal(0)
    tax: Decimal = Decimal(0)
    exempt_taxable: Decimal = Decimal(0)

    def as_text(self) -> dict[str, str | int]:
        """The row with amounts in the currency's minor units ("0.00", not "0") and the rate
        as written ("0.15")."""
        return {
            "period": self.period,
            "currency": self.currency,
            "customer_region": self.customer_region,
            "jurisdiction": self.jurisdiction,
            "tax_code": self.tax_code,
            "tax_name": self.tax_name,
            "rate": f"{self.rate:f}",
            "invoices": self.invoices,
            "credit_notes": self.credit_notes,
            "taxable": f"{quantize(self.taxable, self.currency):f}",
            "tax": f"{quantize(self.tax, self.currency):f}",
            "exempt_taxable": f"{quantize(self.exempt_taxable, self.currency):f}",
        }


def tax_report(
    period: str,
    invoices: Iterable[tuple[InvoiceIssued, str]],
    credit_notes: Iterable[CreditNoteIssued] = (),
) -> list[TaxReportRow]:
    """The rows of `period`'s invoices (with their status: a void one is left out) less their
    credit notes, sorted by currency, region, jurisdiction, code, name and rate."""
    rows: dict[tuple[str, str, str, str, str, Decimal], TaxReportRow] = {}
    regions: dict[uuid.UUID, str] = {}

    def row_of(currency: str, region: str, tax: TaxLine) -> TaxReportRow:
        key = (currency, region, tax.region, tax.tax_code, tax.tax_name, tax.rate)
        row = rows.get(key)
        if row is None:
            row = rows[key] = TaxReportRow(
                period=period,
                currency=currency,
                customer_region=region,
                jurisdiction=tax.region,
                tax_code=tax.tax_code,
                tax_name=tax.tax_name,
                rate=tax.rate,
            )
        return row

    for invoice, status in invoices:
        if invoice.period != period or status == "void":
            continue
        regions[invoice.invoice_id] = invoice.tax_region
        for tax in invoice.taxes:
            row = row_of(invoice.currency, invoice.tax_region, tax)
            row.invoices += 1
            if tax.exemption_certificate is not None:
                row.exempt_taxable += tax.taxable.amount
            else:
                row.taxable += tax.taxable.amount
                row.tax += tax.amount.amount
    for note in credit_notes:
        if note.period != period or note.invoice_id not in regions:
            continue
        for tax in note.taxes:
            row = row_of(note.currency, regions[note.invoice_id], tax)
            row.credit_notes += 1
            if tax.exemption_certificate is not None:
                row.exempt_taxable -= tax.taxable.amount
            else:
                row.taxable -= tax.taxable.amount
                row.tax -= tax.amount.amount
    return [rows[k] for k in sorted(rows, key=lambda k: (*k[:5], str(k[5])))]


def tax_report_csv(rows: Iterable[TaxReportRow]) -> str:
    """RFC 4180 CSV (CRLF line ends), a header row first; amounts as plain decimals."""
    return csv_text(CSV_COLUMNS, (row.as_text() for row in rows))
