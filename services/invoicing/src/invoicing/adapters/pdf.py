"""Invoice PDFs: an issued invoice and the ISP's branding in, reproducible A4 bytes out."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from decimal import Decimal

from fpdf import FPDF, FontFace
from fpdf.enums import TableBordersLayout, TableCellFillMode, XPos, YPos

from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.money import Money

__all__ = ["Branding", "pdf_safe_text", "render_invoice_pdf"]

#: Core PDF fonts need no font file shipped with the service (fpdf2 bundles no TTF fonts),
#: but only cover Windows-1252; anything else goes through pdf_safe_text.
_FONT = "Helvetica"
_ENCODING = "cp1252"

_PAGE_WIDTH = 210.0
_MARGIN = 15.0
_CONTENT_WIDTH = _PAGE_WIDTH - 2 * _MARGIN
_BAND_HEIGHT = 30.0
_CONTINUED_TOP = 20.0
_STAMP_CLEARANCE = 30.0

_INK = (33, 37, 41)
_MUTED = (108, 117, 125)
_RULE = (206, 212, 218)
_ZEBRA = (246, 247, 249)
_PAID_GREEN = (25, 135, 84)

#: Letters NFKD cannot split into a base letter plus accents, and common symbols outside
#: Windows-1252, written the way a reader of a Latin-script invoice would expect.
_TRANSLITERATIONS = {
    "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "\u0131": "i",
    "₹": "Rs", "₨": "Rs", "₦": "N", "₱": "P", "₫": "d", "₩": "W", "₺": "TL", "₽": "RUB",
    "৳": "Tk", "₴": "UAH", "₸": "KZT", "≤": "<=", "≥": ">=",
    "\u2212": "-", "\u2010": "-", "\u2011": "-",  # minus sign, hyphen, non-breaking hyphen
    "\u202f": " ", "\u2009": " ",  # narrow no-break and thin spaces
}  # fmt: skip


@dataclass(frozen=True)
class Branding:
    """How the ISP presents itself on its invoices."""

    isp_name: str
    address: str = ""
    tax_id: str = ""
    email: str = ""
    phone: str = ""
    website: str = ""
    accent_hex: str = "#0B5FFF"
    footer: str = "Thank you for your business."


def render_invoice_pdf(
    invoice: InvoiceIssued, branding: Branding, *, status: str = "ISSUED"
) -> bytes:
    """Render one invoice. The same invoice, branding and status always give the same bytes."""
    accent = _rgb(branding.accent_hex)
    pdf = _InvoicePdf(invoice.number, branding.footer)
    # Byte-for-byte reproducible: the only clock fpdf2 would read is the creation date.
    pdf.set_creation_date(invoice.issued_at)
    pdf.set_producer("ispbill")
    pdf.set_title(f"Invoice {invoice.number}")
    pdf.set_author(pdf_safe_text(branding.isp_name))
    pdf.set_subject(f"Invoice {invoice.number} for {invoice.period}")
    pdf.set_creator("ispbill invoicing")
    # Page 1 places its blocks explicitly below the band; this top margin serves later pages.
    pdf.set_margins(_MARGIN, _CONTINUED_TOP, _MARGIN)
    pdf.set_auto_page_break(auto=True, margin=22)
    pdf.add_page()

    _header(pdf, invoice, branding, accent)
    _parties(pdf, invoice, branding, accent)
    _lines_table(pdf, invoice, accent)
    totals_top = _totals(pdf, invoice, accent)
    paid = status.upper() == "PAID"
    if paid:
        # The tilted stamp is taller than two total rows: keep the note clear of it.
        pdf.set_y(max(pdf.get_y(), totals_top + _STAMP_CLEARANCE - 8))
    _payment_note(pdf, invoice, status)
    if paid:
        _paid_stamp(pdf, totals_top)
    return bytes(pdf.output())


def pdf_safe_text(text: str) -> str:
    """Text the core fonts can draw: Windows-1252 kept, the rest transliterated or '?'."""
    out: list[str] = []
    for char in text:
        if _encodable(char):
            out.append(char)
        elif char in _TRANSLITERATIONS:
            out.append(_TRANSLITERATIONS[char])
        else:
            base = "".join(
                c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)
            )
            out.append(base if base and all(_encodable(c) for c in base) else "?")
    return "".join(out)


class _InvoicePdf(FPDF):
    def __init__(self, number: str, footer_text: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.core_fonts_encoding = _ENCODING
        self._number = number
        self._footer_text = footer_text

    def normalize_text(self, text: str) -> str:
        # Every string drawn passes through here, so no caller can crash the core font.
        return super().normalize_text(pdf_safe_text(text))

    def header(self) -> None:
        if self.page_no() > 1:
            self.set_y(10)
            self.set_font(_FONT, "", 8)
            self.set_text_color(*_MUTED)
            self.cell(0, 5, f"Invoice {self._number} (continued)", align="R")
            self.set_y(_CONTINUED_TOP)

    def footer(self) -> None:
        self.set_y(-16)
        self.set_draw_color(*_RULE)
        self.line(_MARGIN, self.get_y(), _PAGE_WIDTH - _MARGIN, self.get_y())
        self.ln(2)
        self.set_font(_FONT, "", 8)
        self.set_text_color(*_MUTED)
        self.cell(_CONTENT_WIDTH * 0.75, 5, self._footer_text, align="L")
        self.cell(_CONTENT_WIDTH * 0.25, 5, f"Page {self.page_no()} of {{nb}}", align="R")


def _header(pdf: FPDF, invoice: InvoiceIssued, branding: Branding, accent: _Rgb) -> None:
    pdf.set_fill_color(*accent)
    pdf.rect(0, 0, _PAGE_WIDTH, _BAND_HEIGHT, style="F")
    pdf.set_text_color(255, 255, 255)
    pdf.set_xy(_MARGIN, 8)
    name_width = _CONTENT_WIDTH * 0.62
    size = 20
    pdf.set_font(_FONT, "B", size)
    while size > 9 and pdf.get_string_width(branding.isp_name) > name_width:
        size -= 1  # a long company name shrinks rather than running under "INVOICE"
        pdf.set_font(_FONT, "B", size)
    pdf.cell(name_width, 10, branding.isp_name, align="L")
    pdf.set_font(_FONT, "B", 22)
    pdf.set_xy(_MARGIN + _CONTENT_WIDTH * 0.65, 8)
    pdf.cell(_CONTENT_WIDTH * 0.35, 10, "INVOICE", align="R")
    pdf.set_font(_FONT, "", 10)
    pdf.set_xy(_MARGIN + _CONTENT_WIDTH * 0.5, 18)
    pdf.cell(_CONTENT_WIDTH * 0.5, 6, f"No. {invoice.number}", align="R")


def _parties(pdf: FPDF, invoice: InvoiceIssued, branding: Branding, accent: _Rgb) -> None:
    top = _BAND_HEIGHT + 8
    left_width = _CONTENT_WIDTH * 0.55
    right_x = _MARGIN + left_width + 5
    right_width = _CONTENT_WIDTH - left_width - 5

    # The ISP, as the seller of record.
    pdf.set_xy(_MARGIN, top)
    pdf.set_text_color(*_INK)
    pdf.set_font(_FONT, "B", 10)
    pdf.multi_cell(left_width, 5, branding.isp_name, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    pdf.set_font(_FONT, "", 9)
    pdf.set_text_color(*_MUTED)
    seller = [*_address_lines(branding.address)]
    if branding.tax_id:
        seller.append(f"Tax ID: {branding.tax_id}")
    seller += [v for v in (branding.email, branding.phone, branding.website) if v]
    for line in seller:
        pdf.multi_cell(left_width, 4.5, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    seller_bottom = pdf.get_y()

    # The invoice's facts, label and value.
    facts = [
        ("Invoice number", invoice.number),
        ("Issue date", invoice.issued_at.date().isoformat()),
        ("Due date", invoice.due_on.isoformat()),
        ("Billing period", invoice.period),
        ("Customer ID", invoice.customer_id),
    ]
    pdf.set_xy(right_x, top)
    for label, value in facts:
        pdf.set_x(right_x)
        pdf.set_font(_FONT, "", 9)
        pdf.set_text_color(*_MUTED)
        pdf.cell(right_width * 0.45, 5.5, label)
        pdf.set_font(_FONT, "B", 9)
        pdf.set_text_color(*_INK)
        pdf.cell(right_width * 0.55, 5.5, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    facts_bottom = pdf.get_y()

    # Bill to.
    pdf.set_y(max(seller_bottom, facts_bottom) + 7)
    pdf.set_font(_FONT, "B", 8)
    pdf.set_text_color(*accent)
    pdf.cell(0, 5, "BILL TO", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, "B", 11)
    pdf.set_text_color(*_INK)
    pdf.multi_cell(
        left_width, 5.5, invoice.customer_name, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L"
    )
    pdf.set_font(_FONT, "", 9)
    pdf.set_text_color(*_MUTED)
    for line in [*_address_lines(invoice.billing_address), invoice.customer_email]:
        if line:
            pdf.multi_cell(left_width, 4.5, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    pdf.ln(7)


def _lines_table(pdf: FPDF, invoice: InvoiceIssued, accent: _Rgb) -> None:
    currency = invoice.currency
    pdf.set_font(_FONT, "", 9)
    pdf.set_text_color(*_INK)
    pdf.set_draw_color(*_RULE)
    # fpdf2 tables start from the current fill colour: unfilled rows must be white, not accent.
    pdf.set_fill_color(255, 255, 255)
    heading = FontFace(emphasis="BOLD", color=(255, 255, 255), fill_color=accent, size_pt=9)
    with pdf.table(
        col_widths=(88, 16, 16, 30, 30),
        width=_CONTENT_WIDTH,
        align="LEFT",
        text_align=("LEFT", "RIGHT", "LEFT", "RIGHT", "RIGHT"),
        borders_layout=TableBordersLayout.HORIZONTAL_LINES,
        cell_fill_mode=TableCellFillMode.EVEN_ROWS,
        cell_fill_color=_ZEBRA,
        headings_style=heading,
        line_height=5.5,
        padding=(1.5, 2),
        v_align="MIDDLE",
    ) as table:
        table.row(
            ("Description", "Qty", "Unit", f"Unit price ({currency})", f"Amount ({currency})")
        )
        for line in invoice.lines:
            description = line.description
            if line.tax_inclusive and line.gross_amount is not None:
                description += f" (price incl. tax {_amount(line.gross_amount)})"
            table.row(
                (
                    description,
                    _quantity(line.quantity),
                    line.unit,
                    _amount(line.unit_price),
                    _amount(line.amount),
                )
            )


def _totals(pdf: FPDF, invoice: InvoiceIssued, accent: _Rgb) -> float:
    """Subtotal, taxes and total, right-aligned; returns where they start on the page."""
    label_width, value_width = 55.0, 35.0
    x = _MARGIN + _CONTENT_WIDTH - label_width - value_width
    pdf.ln(4)
    rows_height = 6.0 * (1 + len(invoice.taxes)) + 10.0
    # Totals, a possible stamp beside them and the payment note stay together on one page.
    if pdf.will_page_break(max(rows_height, _STAMP_CLEARANCE) + 14.0):
        pdf.add_page()
    top = pdf.get_y()
    rows = [("Subtotal", _amount(invoice.subtotal))]
    for tax in invoice.taxes:
        if tax.exemption_certificate is not None:
            label = f"{tax.tax_name} exempt, cert. {tax.exemption_certificate}"
        else:
            label = f"{tax.tax_name} ({_percent(tax.rate)}% of {_amount(tax.taxable)})"
        rows.append((label, _amount(tax.amount)))
    pdf.set_text_color(*_INK)
    for label, value in rows:
        pdf.set_x(x)
        pdf.set_font(_FONT, "", 9)
        pdf.cell(label_width, 6, label, align="L")
        pdf.cell(value_width, 6, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    pdf.set_x(x)
    pdf.set_fill_color(*accent)
    pdf.set_text_color(255, 255, 255)
    pdf.set_font(_FONT, "B", 11)
    pdf.cell(label_width, 9, "  Total", align="L", fill=True)
    pdf.cell(
        value_width,
        9,
        f"{_amount(invoice.total)} {invoice.currency}  ",
        align="R",
        fill=True,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.set_text_color(*_INK)
    return top


def _payment_note(pdf: FPDF, invoice: InvoiceIssued, status: str) -> None:
    pdf.ln(8)
    pdf.set_font(_FONT, "", 9)
    pdf.set_text_color(*_MUTED)
    if status.upper() == "PAID":
        note = "This invoice has been paid in full."
    else:
        note = (
            f"Please pay {_amount(invoice.total)} {invoice.currency} by "
            f"{invoice.due_on.isoformat()}, quoting invoice number {invoice.number}."
        )
    pdf.multi_cell(_CONTENT_WIDTH, 5, note, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")


def _paid_stamp(pdf: FPDF, totals_top: float) -> None:
    # In the empty space left of the totals, where a clerk's rubber stamp would land.
    width, height = 52.0, 18.0
    x, y = _MARGIN + 12, totals_top + 2
    with pdf.rotation(angle=12, x=x + width / 2, y=y + height / 2):
        pdf.set_draw_color(*_PAID_GREEN)
        pdf.set_text_color(*_PAID_GREEN)
        pdf.set_line_width(1.2)
        pdf.rect(x, y, width, height, round_corners=True, corner_radius=3)
        pdf.set_font(_FONT, "B", 28)
        pdf.set_xy(x, y)
        pdf.cell(width, height, "PAID", align="C")
    pdf.set_line_width(0.2)


_Rgb = tuple[int, int, int]


def _rgb(hex_colour: str) -> _Rgb:
    text = hex_colour.strip().removeprefix("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    if len(text) != 6:
        raise ValueError(f"accent colour must look like #RRGGBB, got {hex_colour!r}")
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        raise ValueError(f"accent colour must look like #RRGGBB, got {hex_colour!r}") from None


def _encodable(char: str) -> bool:
    try:
        char.encode(_ENCODING)
    except UnicodeEncodeError:
        return False
    return True


def _address_lines(address: str) -> list[str]:
    return [part.strip() for part in address.splitlines() if part.strip()]


def _amount(money: Money) -> str:
    return f"{money.amount:,}"


def _quantity(quantity: Decimal) -> str:
    if quantity == quantity.to_integral_value():
        return f"{quantity.to_integral_value():,}"
    return f"{quantity.normalize():f}"


def _percent(rate: Decimal) -> str:
    percent = (rate * 100).normalize()
    if percent == percent.to_integral_value():
        percent = percent.to_integral_value()
    return f"{percent:f}"
