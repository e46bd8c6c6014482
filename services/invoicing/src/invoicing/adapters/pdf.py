"""Invoice PDFs: an issued invoice, the ISP's branding and the invoice template in,
reproducible A4 bytes out, in the customer's language (ADR 0033).

Two font paths. An invoice whose every word is in Windows-1252 (English labels, Latin names)
is drawn with the PDF core fonts: nothing embedded, about 5 ms a page. Any other text (a
Bengali or Arabic name, Bengali labels, Łódź) switches the whole document to the Noto fonts
of Debian's fonts-noto-core, embedded as subsets, with HarfBuzz shaping for Bengali conjuncts
and Arabic joining; characters none of those fonts has are transliterated or shown as "?".
"""

from __future__ import annotations

import copy
import functools
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import parse_pattern
from fontTools.ttLib import TTFont
from fpdf import FPDF, FontFace
from fpdf import line_break as _fpdf_line_break
from fpdf.enums import TableBordersLayout, TableCellFillMode, XPos, YPos
from fpdf.fonts import SubsetMap, TTFFont

from invoicing.adapters.invoice_template import InvoiceTemplate
from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.money import Money

__all__ = ["Branding", "FontsMissing", "pdf_safe_text", "render_invoice_pdf"]

#: Core PDF fonts need no font file, but only cover Windows-1252.
_CORE_FONT = "Helvetica"
_ENCODING = "cp1252"

#: Where the Noto fonts are (Debian's fonts-noto-core); ISPBILL_PDF_FONTS_DIR overrides.
DEFAULT_FONTS_DIR = "/usr/share/fonts/truetype/noto"
_LATIN = "NotoSans"
#: The fonts a script needs, tried in this order after the Latin one (fpdf2 fallback fonts).
_SCRIPT_FONTS = {
    "NotoSansBengali": ("NotoSansBengali-Regular.ttf", "NotoSansBengali-Bold.ttf"),
    "NotoNaskhArabic": ("NotoNaskhArabic-Regular.ttf", "NotoNaskhArabic-Bold.ttf"),
}
_LATIN_FILES = ("NotoSans-Regular.ttf", "NotoSans-Bold.ttf")

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


class FontsMissing(RuntimeError):
    """The Noto fonts an invoice needs are not installed."""


def render_invoice_pdf(
    invoice: InvoiceIssued,
    branding: Branding,
    *,
    status: str = "ISSUED",
    template: InvoiceTemplate | None = None,
    language: str | None = None,
) -> bytes:
    """Render one invoice in `language` (default: the invoice's, then the template's). The
    same invoice, branding, template, language and status always give the same bytes."""
    template = template or default_template()
    words = _Words(template, template.language_for(language or invoice.language), invoice)
    accent = _rgb(template.accent or branding.accent_hex)
    texts = [*_texts_of(invoice, branding), *template.labels[words.language].values()]
    fonts = _fonts_for(texts)
    pdf = _InvoicePdf(words, branding.footer, fonts, invoice.number)
    # Byte-for-byte reproducible: the only clock fpdf2 would read is the creation date.
    pdf.set_creation_date(invoice.issued_at)
    pdf.set_producer("ispbill")
    pdf.set_title(f"Invoice {invoice.number}")
    pdf.set_author(branding.isp_name if fonts else pdf_safe_text(branding.isp_name))
    pdf.set_subject(f"Invoice {invoice.number} for {invoice.period}")
    pdf.set_creator("ispbill invoicing")
    pdf.set_lang(words.language)
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


@functools.cache
def default_template() -> InvoiceTemplate:
    """The template of ISPBILL_INVOICE_TEMPLATE merged over the default, read once."""
    return InvoiceTemplate.load(os.environ.get("ISPBILL_INVOICE_TEMPLATE") or None)


class _Words:
    """The template's labels in one language, and babel's numbers and dates for it."""

    def __init__(self, template: InvoiceTemplate, language: str, invoice: InvoiceIssued) -> None:
        self.template = template
        self.language = language
        try:
            self.locale = Locale.parse(language)
        except (UnknownLocaleError, ValueError):
            self.locale = Locale.parse("en")
        self._decimal = self.locale.decimal_formats[None].pattern

    def __call__(self, key: str, **values: object) -> str:
        return self.template.text(self.language, key, **values)

    def amount(self, money: Money) -> str:
        """In the locale's grouping (12,34,567.50 in Bengali), with the currency's minor
        units (a Money is quantized to them)."""
        exponent = money.amount.as_tuple().exponent
        digits = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        return self._formatted(money.amount, digits, digits)

    def number(self, value: Decimal) -> str:
        return self._formatted(value, 0, 6)

    def _formatted(self, value: Decimal, least: int, most: int) -> str:
        pattern = parse_pattern(self._decimal)
        pattern.frac_prec = (least, most)
        return str(pattern.apply(value, self.locale))

    def date(self, day: date) -> str:
        return str(format_date(day, format="medium", locale=self.locale))


def _texts_of(invoice: InvoiceIssued, branding: Branding) -> Iterable[str]:
    yield from (
        invoice.customer_name,
        invoice.customer_email,
        invoice.billing_address,
        invoice.customer_id,
        invoice.number,
        branding.isp_name,
        branding.address,
        branding.tax_id,
        branding.email,
        branding.phone,
        branding.website,
        branding.footer,
    )
    for line in invoice.lines:
        yield line.description
        yield line.unit
    for tax in invoice.taxes:
        yield tax.tax_name
        yield tax.exemption_certificate or ""


@dataclass(frozen=True)
class _Fonts:
    """The Noto fonts one document embeds: the Latin family and the scripts its text needs."""

    directory: Path
    scripts: tuple[str, ...]
    shaping: bool


def _fonts_for(texts: Iterable[str]) -> _Fonts | None:
    """None when every text is Windows-1252 (the core fonts draw it); else the Noto fonts."""
    needed: set[str] = set()
    core = True
    for text in texts:
        if core and not _all_encodable(text):
            core = False
        for char in text:
            if "\u0980" <= char <= "\u09ff":
                needed.add("NotoSansBengali")
            elif (
                "\u0600" <= char <= "\u06ff"
                or "\u0750" <= char <= "\u077f"
                or ("\ufb50" <= char <= "\ufdff" or "\ufe70" <= char <= "\ufeff")
            ):
                needed.add("NotoNaskhArabic")
    if core:
        return None
    directory = Path(os.environ.get("ISPBILL_PDF_FONTS_DIR") or DEFAULT_FONTS_DIR)
    scripts = tuple(name for name in _SCRIPT_FONTS if name in needed)
    return _Fonts(directory, scripts, shaping=bool(scripts))


@functools.cache
def _coverage(path: Path) -> frozenset[int]:
    """The code points a font file has glyphs for (read once per process)."""
    font = TTFont(path, lazy=True)
    try:
        return frozenset(font.getBestCmap())
    finally:
        font.close()


@functools.cache
def _prototype(path: Path, style: str) -> TTFFont:
    """A font as fpdf2's add_font reads it (cmap, widths, glyph ids, HarfBuzz face), once
    per process; documents use copies (`_InvoicePdf._add_cached_font`)."""
    return TTFFont(FPDF(), path, "prototype", style)


#: The tables fpdf2's output drops from every embedded subset (fpdf/output.py, _add_fonts),
#: and the layout tables only shaping reads (HarfBuzz reads the font file itself).
_NOT_EMBEDDED = (
    "GSUB", "GPOS", "GDEF", "FFTM", "MATH", "hdmx", "meta", "sbix", "CBDT", "CBLC", "EBDT",
    "EBLC", "EBSC", "SVG ", "CPAL", "COLR",
)  # fmt: skip


@functools.cache
def _layout_free(path: Path) -> bytes:
    """The font file without the tables no embedded subset keeps, once per process."""
    font = TTFont(path, recalcTimestamp=False)
    for tag in _NOT_EMBEDDED:
        if tag in font:
            del font[tag]
    out = BytesIO()
    font.save(out)
    return out.getvalue()


def _font_file(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise FontsMissing(
            f"invoice PDF font {path} is missing: install Debian's fonts-noto-core (make"
            " install does), or point ISPBILL_PDF_FONTS_DIR at a directory holding the Noto"
            " fonts"
        )
    return path


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
    def __init__(self, words: _Words, isp_footer: str, fonts: _Fonts | None, number: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.words = words
        self.number = number
        self._isp_footer = isp_footer
        self._fonts = fonts
        self._covered: frozenset[int] = frozenset()
        self._cached_fonts: list[tuple[TTFFont, Path]] = []
        if fonts is None:
            self.core_fonts_encoding = _ENCODING
            self.family = _CORE_FONT
            return
        self.family = _LATIN
        regular, bold = (_font_file(fonts.directory, name) for name in _LATIN_FILES)
        self._add_cached_font(_LATIN, "", regular)
        self._add_cached_font(_LATIN, "B", bold)
        covered = set(_coverage(regular))
        for name in fonts.scripts:
            script_regular, script_bold = (
                _font_file(fonts.directory, f) for f in _SCRIPT_FONTS[name]
            )
            self._add_cached_font(name, "", script_regular)
            self._add_cached_font(name, "B", script_bold)
            covered |= _coverage(script_regular)
        self._covered = frozenset(covered)
        if fonts.scripts:
            self.set_fallback_fonts(list(fonts.scripts))
        if fonts.shaping:
            self.set_text_shaping(True)

    def _add_cached_font(self, family: str, style: str, path: Path) -> None:
        """`add_font`, without reading the font file again: fpdf2 reads a font's cmap and
        metrics on every add_font (27 ms a document for four fonts); here they come from
        one copy per process, and only the document's own state (its glyph subset, its
        object numbers) is new. At output, the subset is cut from the font without its
        layout tables (which the embedded subset drops anyway) and without recomputing glyph
        bounding boxes (the outlines do not change), not from a fresh parse of GSUB and GPOS:
        a Bengali invoice took 117 ms, now about 70 (ADR 0033)."""
        font = copy.copy(_prototype(path, style))
        font.i = len(self.fonts) + 1
        font.fontkey = f"{family.lower()}{style}"
        font.desc = copy.copy(font.desc)
        font.subset = SubsetMap(font)
        font.missing_glyphs = []
        font.biggest_size_pt = 0
        self.fonts[font.fontkey] = font
        self._cached_fonts.append((font, path))

    def output(self, *args: Any, **kwargs: Any) -> Any:
        for font, path in self._cached_fonts:
            # the output's subsetting changes the font it is given: a copy of its own
            font.ttfont = TTFont(
                BytesIO(_layout_free(path)), recalcTimestamp=False, recalcBBoxes=False, lazy=True
            )
        return super().output(*args, **kwargs)

    def normalize_text(self, text: str) -> str:
        # Every string drawn passes through here, so no caller can crash a font: what the
        # fonts cannot draw is transliterated, or "?".
        if self._fonts is None:
            return super().normalize_text(pdf_safe_text(text))
        covered = self._covered
        if all(ord(c) in covered or c in "\n\r\t" for c in text):
            return super().normalize_text(text)
        return super().normalize_text(
            "".join(c if ord(c) in covered or c in "\n\r\t" else pdf_safe_text(c) for c in text)
        )

    def header(self) -> None:
        if self.page_no() > 1:
            self.set_y(10)
            self.set_font(self.family, "", 8)
            self.set_text_color(*_MUTED)
            self.cell(0, 5, self.words("continued", number=self.number), align="R")
            self.set_y(_CONTINUED_TOP)

    def footer(self) -> None:
        self.set_y(-16)
        self.set_draw_color(*_RULE)
        self.line(_MARGIN, self.get_y(), _PAGE_WIDTH - _MARGIN, self.get_y())
        self.ln(2)
        self.set_font(self.family, "", 8)
        self.set_text_color(*_MUTED)
        footer = self.words("footer", isp_footer=self._isp_footer)
        self.cell(_CONTENT_WIDTH * 0.75, 5, footer, align="L")
        page = self.words("page", page=self.page_no(), pages="{nb}")
        self.cell(_CONTENT_WIDTH * 0.25, 5, page, align="R")


def _header(pdf: _InvoicePdf, invoice: InvoiceIssued, branding: Branding, accent: _Rgb) -> None:
    words, family = pdf.words, pdf.family
    pdf.set_fill_color(*accent)
    pdf.rect(0, 0, _PAGE_WIDTH, _BAND_HEIGHT, style="F")
    pdf.set_text_color(255, 255, 255)
    pdf.set_xy(_MARGIN, 8)
    name_width = _CONTENT_WIDTH * 0.62
    size = 20
    pdf.set_font(family, "B", size)
    while size > 9 and pdf.get_string_width(branding.isp_name) > name_width:
        size -= 1  # a long company name shrinks rather than running under "INVOICE"
        pdf.set_font(family, "B", size)
    pdf.cell(name_width, 10, branding.isp_name, align="L")
    pdf.set_font(family, "B", 22)
    pdf.set_xy(_MARGIN + _CONTENT_WIDTH * 0.65, 8)
    pdf.cell(_CONTENT_WIDTH * 0.35, 10, words("title"), align="R")
    pdf.set_font(family, "", 10)
    pdf.set_xy(_MARGIN + _CONTENT_WIDTH * 0.5, 18)
    pdf.cell(_CONTENT_WIDTH * 0.5, 6, words("number", number=invoice.number), align="R")


def _parties(pdf: _InvoicePdf, invoice: InvoiceIssued, branding: Branding, accent: _Rgb) -> None:
    words, family = pdf.words, pdf.family
    top = _BAND_HEIGHT + 8
    left_width = _CONTENT_WIDTH * 0.55
    right_x = _MARGIN + left_width + 5
    right_width = _CONTENT_WIDTH - left_width - 5

    # The ISP, as the seller of record.
    pdf.set_xy(_MARGIN, top)
    pdf.set_text_color(*_INK)
    pdf.set_font(family, "B", 10)
    pdf.multi_cell(left_width, 5, branding.isp_name, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    pdf.set_font(family, "", 9)
    pdf.set_text_color(*_MUTED)
    seller = [*_address_lines(branding.address)]
    if branding.tax_id:
        seller.append(words("tax_id", tax_id=branding.tax_id))
    seller += [v for v in (branding.email, branding.phone, branding.website) if v]
    for line in seller:
        pdf.multi_cell(left_width, 4.5, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    seller_bottom = pdf.get_y()

    # The invoice's facts, label and value.
    facts = [
        (words("invoice_number"), invoice.number),
        (words("issue_date"), words.date(invoice.issued_at.date())),
        (words("due_date"), words.date(invoice.due_on)),
        (words("billing_period"), invoice.period),
        (words("customer_id"), invoice.customer_id),
    ]
    pdf.set_xy(right_x, top)
    for label, value in facts:
        pdf.set_x(right_x)
        pdf.set_font(family, "", 9)
        pdf.set_text_color(*_MUTED)
        pdf.cell(right_width * 0.45, 5.5, label)
        pdf.set_font(family, "B", 9)
        pdf.set_text_color(*_INK)
        pdf.cell(right_width * 0.55, 5.5, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    facts_bottom = pdf.get_y()

    # Bill to.
    pdf.set_y(max(seller_bottom, facts_bottom) + 7)
    pdf.set_font(family, "B", 8)
    pdf.set_text_color(*accent)
    pdf.cell(0, 5, words("bill_to"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(family, "B", 11)
    pdf.set_text_color(*_INK)
    pdf.multi_cell(
        left_width, 5.5, invoice.customer_name, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L"
    )
    pdf.set_font(family, "", 9)
    pdf.set_text_color(*_MUTED)
    for line in [*_address_lines(invoice.billing_address), invoice.customer_email]:
        if line:
            pdf.multi_cell(left_width, 4.5, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    pdf.ln(7)


def _lines_table(pdf: _InvoicePdf, invoice: InvoiceIssued, accent: _Rgb) -> None:
    words = pdf.words
    currency = invoice.currency
    pdf.set_font(pdf.family, "", 9)
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
            (
                words("description"),
                words("quantity"),
                words("unit"),
                words("unit_price", currency=currency),
                words("amount", currency=currency),
            )
        )
        for line in invoice.lines:
            description = line.description
            if line.tax_inclusive and line.gross_amount is not None:
                gross = words.amount(line.gross_amount)
                description += " " + words("price_incl_tax", gross=gross)
            table.row(
                (
                    description,
                    words.number(line.quantity),
                    line.unit,
                    words.amount(line.unit_price),
                    words.amount(line.amount),
                )
            )


def _totals(pdf: _InvoicePdf, invoice: InvoiceIssued, accent: _Rgb) -> float:
    """Subtotal, taxes and total, right-aligned; returns where they start on the page."""
    words, family = pdf.words, pdf.family
    label_width, value_width = 55.0, 35.0
    x = _MARGIN + _CONTENT_WIDTH - label_width - value_width
    pdf.ln(4)
    rows_height = 6.0 * (1 + len(invoice.taxes)) + 10.0
    # Totals, a possible stamp beside them and the payment note stay together on one page.
    if pdf.will_page_break(max(rows_height, _STAMP_CLEARANCE) + 14.0):
        pdf.add_page()
    top = pdf.get_y()
    rows = [(words("subtotal"), words.amount(invoice.subtotal))]
    for tax in invoice.taxes:
        if tax.exemption_certificate is not None:
            label = words("tax_exempt", tax=tax.tax_name, certificate=tax.exemption_certificate)
        else:
            label = words(
                "tax_line",
                tax=tax.tax_name,
                rate=words.number(_percent(tax.rate)),
                taxable=words.amount(tax.taxable),
            )
        rows.append((label, words.amount(tax.amount)))
    pdf.set_text_color(*_INK)
    for label, value in rows:
        pdf.set_x(x)
        pdf.set_font(family, "", 9)
        pdf.cell(label_width, 6, label, align="L")
        pdf.cell(value_width, 6, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    pdf.set_x(x)
    pdf.set_fill_color(*accent)
    pdf.set_text_color(255, 255, 255)
    pdf.set_font(family, "B", 11)
    pdf.cell(label_width, 9, "  " + words("total"), align="L", fill=True)
    pdf.cell(
        value_width,
        9,
        f"{words.amount(invoice.total)} {invoice.currency}  ",
        align="R",
        fill=True,
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.set_text_color(*_INK)
    return top


def _payment_note(pdf: _InvoicePdf, invoice: InvoiceIssued, status: str) -> None:
    words = pdf.words
    pdf.ln(8)
    pdf.set_font(pdf.family, "", 9)
    pdf.set_text_color(*_MUTED)
    due = {
        "number": invoice.number,
        "total": words.amount(invoice.total),
        "currency": invoice.currency,
        "due_date": words.date(invoice.due_on),
    }
    note = words("paid_note") if status.upper() == "PAID" else words("pay_note", **due)
    pdf.multi_cell(_CONTENT_WIDTH, 5, note, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    instructions = words("payment_instructions", **due, customer_id=invoice.customer_id)
    if instructions and status.upper() != "PAID":
        pdf.ln(2)
        pdf.set_text_color(*_INK)
        pdf.multi_cell(
            _CONTENT_WIDTH, 5, instructions, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L"
        )


def _paid_stamp(pdf: _InvoicePdf, totals_top: float) -> None:
    # In the empty space left of the totals, where a clerk's rubber stamp would land.
    width, height = 52.0, 18.0
    x, y = _MARGIN + 12, totals_top + 2
    with pdf.rotation(angle=12, x=x + width / 2, y=y + height / 2):
        pdf.set_draw_color(*_PAID_GREEN)
        pdf.set_text_color(*_PAID_GREEN)
        pdf.set_line_width(1.2)
        pdf.rect(x, y, width, height, round_corners=True, corner_radius=3)
        pdf.set_font(pdf.family, "B", 28)
        pdf.set_xy(x, y)
        pdf.cell(width, height, pdf.words("paid_stamp"), align="C")
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


def _percent(rate: Decimal) -> Decimal:
    percent = (rate * 100).normalize()
    if percent == percent.to_integral_value():
        percent = percent.to_integral_value()
    return percent


def _all_encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode(_ENCODING)
    except UnicodeEncodeError:
        return False
    return True


_original_shaping = _fpdf_line_break.Fragment.render_with_text_shaping


def _with_actual_text(self: _fpdf_line_break.Fragment, *args: object, **kwargs: object) -> str:
    """fpdf2 maps a shaped cluster's text to its first glyph; Bengali draws a vowel sign
    before its consonant, so text extraction saw "রহি ম" for "রহিম". Each shaped run of a
    left-to-right script is wrapped in a marked-content span whose ActualText is the run's own
    text (PDF 32000-1, 14.9.4): copy, search and pdftotext give the words as written."""
    rendered: str = _original_shaping(self, *args, **kwargs)  # type: ignore[arg-type]
    text = self.string
    if not rendered or text.isascii() or any(_is_rtl(c) for c in text):
        return rendered
    hexed = ("\ufeff" + text).encode("utf-16-be").hex().upper()
    return f"/Span <</ActualText <{hexed}>>> BDC {rendered} EMC"


def _is_rtl(char: str) -> bool:
    return unicodedata.bidirectional(char) in ("R", "AL", "RLE", "RLO", "RLI")


_fpdf_line_break.Fragment.render_with_text_shaping = _with_actual_text  # type: ignore[method-assign]

_original_width = TTFFont.shaped_text_width
_widths: dict[tuple[object, ...], tuple[int, float]] = {}


def _cached_width(
    self: TTFFont, text: str, font_size_pt: float, params: dict[str, Any] | None
) -> tuple[int, float]:
    """fpdf2 shapes a text again each time it measures it while breaking lines, character by
    character: 3,200 HarfBuzz calls for one Bengali invoice. The width of a text in a font
    file, size and shaping parameters never changes, so it is kept (per process, bounded)."""
    key = (
        self.ttffile,
        text,
        font_size_pt,
        tuple(sorted((k, repr(v)) for k, v in (params or {}).items())),
    )
    found = _widths.get(key)
    if found is None:
        found = _original_width(self, text, font_size_pt, params)
        if len(_widths) >= 200_000:
            _widths.clear()
        _widths[key] = found
    return found


TTFFont.shaped_text_width = _cached_width  # type: ignore[method-assign,assignment]
