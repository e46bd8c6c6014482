"""The tax report's rows and CSV (invoicing.application.tax_report)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from invoicing.application.tax_report import CSV_COLUMNS, tax_report, tax_report_csv
from ispbill_core.contracts.invoicing import CreditNoteIssued, InvoiceIssued, TaxLine
from ispbill_core.money import Money

pytestmark = pytest.mark.unit


def invoice(period: str, region: str, *taxes: TaxLine) -> InvoiceIssued:
    zero = Money.zero("BDT")
    return InvoiceIssued(
        invoice_id=uuid.uuid4(),
        number="INV-1",
        customer_id="c",
        customer_name="C",
        customer_email="c@example.com",
        tax_region=region,
        period=period,
        issued_at=datetime(2026, 3, 1, tzinfo=UTC),
        due_on=date(2026, 3, 15),
        currency="BDT",
        lines=(),
        subtotal=zero,
        taxes=taxes,
        tax_total=zero,
        total=zero,
    )


def tax(name: str, taxable: str, amount: str, certificate: str | None = None) -> TaxLine:
    return TaxLine(
        tax_name=name,
        rate=Decimal("0.15"),
        taxable=Money.of(taxable, "BDT"),
        amount=Money.of(amount, "BDT"),
        tax_code="VAT",
        region="BD",
        exemption_certificate=certificate,
    )


def test_rows_add_up_per_region_and_rate_and_exempt_value_apart() -> None:
    rows = tax_report(
        "2026-02",
        [
            (invoice("2026-02", "BD.dhaka", tax("VAT", "100.00", "15.00")), "issued"),
            (invoice("2026-02", "BD.dhaka", tax("VAT", "200.00", "0.00", "EX-1")), "paid"),
            (invoice("2026-02", "BD.dhaka", tax("VAT", "0.10", "0.02")), "issued"),
            (invoice("2026-01", "BD.dhaka", tax("VAT", "999.00", "149.85")), "issued"),
            (invoice("2026-02", "BD.dhaka", tax("VAT", "50.00", "7.50")), "void"),
        ],
    )
    assert [r.as_text() for r in rows] == [
        {
            "period": "2026-02",
            "currency": "BDT",
            "customer_region": "BD.dhaka",
            "jurisdiction": "BD",
            "tax_code": "VAT",
            "tax_name": "VAT",
            "rate": "0.15",
            "invoices": 3,
            "credit_notes": 0,
            "taxable": "100.10",
            "tax": "15.02",
            "exempt_taxable": "200.00",
        }
    ]


def test_a_tax_name_a_spreadsheet_would_run_is_quoted() -> None:
    rows = tax_report(
        "2026-02", [(invoice("2026-02", "X", tax('=HYPERLINK("x")', "1.00", "0.15")), "issued")]
    )
    text = tax_report_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == list(CSV_COLUMNS)
    assert parsed[0]["tax_name"] == '\'=HYPERLINK("x")'
    assert text.endswith("\r\n")


def test_a_credit_note_is_taken_off_the_period_of_the_invoice_it_credits() -> None:
    credited = invoice("2026-02", "BD", tax("VAT", "100.00", "15.00"))
    zero = Money.zero("BDT")
    note = CreditNoteIssued(
        credit_note_id=uuid.uuid4(),
        number="CN-1",
        invoice_id=credited.invoice_id,
        invoice_number=credited.number,
        customer_id="c",
        period="2026-02",
        issued_at=datetime(2026, 3, 5, tzinfo=UTC),
        reason="outage",
        reference="T-1",
        currency="BDT",
        lines=(),
        subtotal=zero,
        taxes=(tax("VAT", "40.00", "6.00"),),
        tax_total=zero,
        total=zero,
        invoice_credited=zero,
    )
    [row] = tax_report("2026-02", [(credited, "issued")], [note])
    assert (row.invoices, row.credit_notes, row.taxable, row.tax) == (
        1,
        1,
        Decimal("60.00"),
        Decimal("9.00"),
    )


def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_amounts_are_not() -> None:
    from invoicing.application.csv_export import csv_text

    text = csv_text(
        ("name", "amount", "other"),
        [{"name": "@SUM(A1)", "amount": "-6.00", "other": "-1+1"}, {"name": "+1", "amount": 3}],
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["name", "amount", "other"], ["'@SUM(A1)", "-6.00", "'-1+1"], ["'+1", "3", ""]]
