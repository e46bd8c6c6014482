"""Invoice PDFs: the text a reader (and pypdf) finds, reproducible bytes, any customer name."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from invoicing.adapters.pdf import Branding, pdf_safe_text, render_invoice_pdf
from ispbill_core.contracts.invoicing import InvoiceLine, LineKind
from ispbill_core.money import Money
from tests.fixtures.invoice_documents import invoice

pytestmark = pytest.mark.unit

BRANDING = Branding(
    isp_name="Riverside Fibre Ltd",
    address="1 Mill Lane\nRiverside RS1 2AB",
    tax_id="GB123456789",
    email="billing@riverside.example",
    phone="+44 20 7946 0000",
    website="riverside.example",
    accent_hex="#0B5FFF",
    footer="Thank you for choosing Riverside Fibre.",
)


def text_of(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_the_pdf_states_number_customer_dates_lines_and_totals() -> None:
    inv = invoice()
    pdf = render_invoice_pdf(inv, BRANDING)
    assert pdf.startswith(b"%PDF-")
    text = text_of(pdf)
    for expected in (
        "Riverside Fibre Ltd",
        "GB123456789",
        "INVOICE",
        "INV-2026-000042",
        "Ada Lovelace",
        "ada@example.org",
        "12 Analytical Row",
        "Dec 1, 2026",  # issue date, as babel writes it in English
        "Dec 15, 2026",  # due date
        "2026-11",
        "Plan Fiber 100",
        "1,234.50",  # the fee, with a thousands separator
        "4.50",  # 2 GB and 1 byte over: three started GB at 1.50
        "Subtotal",
        "1,239.00",
        "VAT (20% of 1,239.00)",
        "247.80",
        "1,486.80 EUR",  # the total with its currency
        "Page 1 of 1",
        "Thank you for choosing Riverside Fibre.",
    ):
        assert expected in text, expected
    assert "PAID" not in text


def test_amounts_on_the_pdf_are_the_invoice_amounts() -> None:
    inv = invoice()
    text = text_of(render_invoice_pdf(inv, BRANDING))
    assert f"{inv.total.amount:,} {inv.currency}" in text
    assert f"{inv.subtotal.amount:,}" in text
    for line in inv.lines:
        assert f"{line.amount.amount:,}" in text


def test_rendering_twice_gives_identical_bytes() -> None:
    inv = invoice()
    assert render_invoice_pdf(inv, BRANDING) == render_invoice_pdf(inv, BRANDING)
    paid = render_invoice_pdf(inv, BRANDING, status="PAID")
    assert paid == render_invoice_pdf(inv, BRANDING, status="PAID")
    assert paid != render_invoice_pdf(inv, BRANDING)


def test_the_creation_date_is_the_issue_time_not_the_clock() -> None:
    reader = PdfReader(io.BytesIO(render_invoice_pdf(invoice(), BRANDING)))
    assert reader.metadata is not None
    assert reader.metadata.creation_date == datetime(2026, 12, 1, 6, 30, tzinfo=UTC)
    assert reader.metadata.title == "Invoice INV-2026-000042"


def test_a_paid_invoice_carries_a_paid_stamp() -> None:
    text = text_of(render_invoice_pdf(invoice(), BRANDING, status="PAID"))
    assert "PAID" in text
    assert "paid in full" in text


def test_names_outside_windows_1252_print_as_written_with_embedded_fonts() -> None:
    pdf = render_invoice_pdf(invoice(customer_name="Łódź — café ₹"), BRANDING)
    assert "Łódź — café ₹" in text_of(pdf)
    assert b"/FontFile2" in pdf  # the Noto fonts are embedded: any reader shows the same


def test_a_latin_invoice_keeps_the_core_fonts_and_embeds_nothing() -> None:
    assert b"/FontFile2" not in render_invoice_pdf(invoice(), BRANDING)


def test_scripts_no_font_covers_degrade_to_question_marks_not_a_crash() -> None:
    branding = Branding(isp_name="Сеть 北京 ISP", address="東京都\nمدينة")
    text = text_of(render_invoice_pdf(invoice(customer_name="Иван 李"), branding))
    assert "Сеть ?? ISP" in text and "Иван ?" in text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(min_size=1, max_size=60))
def test_any_unicode_name_renders(name: str) -> None:
    assert render_invoice_pdf(invoice(customer_name=name), BRANDING).startswith(b"%PDF-")


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("Łódź", "Lódz"),
        ("café — “quoted” €5", "café — “quoted” €5"),  # all in Windows-1252: kept
        ("₹ 1,000", "Rs 1,000"),
        ("Dvořák Ørsted", "Dvorák Ørsted"),
        ("北京", "??"),
        ("ﬁbre", "fibre"),  # compatibility ligature split by NFKD
    ],
)
def test_pdf_safe_text(text: str, safe: str) -> None:
    assert pdf_safe_text(text) == safe


def test_a_long_invoice_flows_onto_more_pages_with_page_numbers() -> None:
    lines = tuple(
        InvoiceLine(
            kind=LineKind.USAGE,
            description=f"Static IP block {i}",
            quantity=Decimal(1),
            unit="month",
            unit_price=Money.of("5.00", "EUR"),
            amount=Money.of("5.00", "EUR"),
        )
        for i in range(80)
    )
    pdf = render_invoice_pdf(invoice(lines=lines), BRANDING)
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) >= 2
    last = reader.pages[-1].extract_text()
    assert f"Page {len(reader.pages)} of {len(reader.pages)}" in last
    assert "400.00 EUR" in last  # the totals are never split from the end of the table


def test_currencies_without_minor_units_print_whole_amounts() -> None:
    line = InvoiceLine(
        kind=LineKind.RECURRING,
        description="Plan Hikari 1G — 2026-11",
        quantity=Decimal(1),
        unit="month",
        unit_price=Money.of(5500, "JPY"),
        amount=Money.of(5500, "JPY"),
    )
    text = text_of(render_invoice_pdf(invoice(lines=(line,), currency="JPY"), BRANDING))
    assert "5,500 JPY" in text


@pytest.mark.parametrize("accent", ["#0B5FFF", "0b5fff", "#0bf"])
def test_accent_colours(accent: str) -> None:
    branding = Branding(isp_name="X", accent_hex=accent)
    assert render_invoice_pdf(invoice(), branding).startswith(b"%PDF-")


def test_a_malformed_accent_colour_is_refused() -> None:
    with pytest.raises(ValueError, match="accent colour"):
        render_invoice_pdf(invoice(), Branding(isp_name="X", accent_hex="blue"))


def test_a_long_isp_name_shrinks_to_fit_the_band() -> None:
    name = "Greater Riverside Valley Community Broadband Cooperative Ltd"
    text = text_of(render_invoice_pdf(invoice(), Branding(isp_name=name)))
    assert name in text
