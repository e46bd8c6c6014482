"""Invoice PDFs in Bengali and Arabic, in the customer's language, from an editable template
(ADR 0033): checked with poppler's pdftotext, as a customer's PDF reader would extract them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from invoicing.adapters.invoice_template import InvoiceTemplate, TemplateError
from invoicing.adapters.pdf import Branding, FontsMissing, render_invoice_pdf
from tests.fixtures.invoice_documents import invoice

pytestmark = pytest.mark.integration

BRANDING = Branding(
    isp_name="Padma Net Ltd", address="House 12, Road 5\nDhaka 1212", tax_id="BIN-004455667"
)
BENGALI_NAME = "মোহাম্মদ রহিম উদ্দিন"


def pdftotext(pdf: bytes, tmp_path: Path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.fail("pdftotext is missing: make install-system installs poppler-utils")
    path = tmp_path / "invoice.pdf"
    path.write_bytes(pdf)
    return subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(path), "-"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_a_customer_named_in_bengali_is_printed_and_found_by_pdftotext(tmp_path: Path) -> None:
    inv = invoice(customer_name=BENGALI_NAME)
    pdf = render_invoice_pdf(inv, BRANDING)
    text = pdftotext(pdf, tmp_path)
    assert BENGALI_NAME in text
    assert inv.number in text
    assert f"{inv.total.amount:,} {inv.currency}" in text  # 1,486.80 EUR
    assert b"NotoSansBengali" in pdf
    # the same bytes every time: an archived invoice can be rendered again and compared
    assert render_invoice_pdf(inv, BRANDING) == pdf


def test_an_invoice_in_bengali_has_bengali_labels_dates_and_grouping(tmp_path: Path) -> None:
    inv = invoice(customer_name=BENGALI_NAME, fee="123456.50")
    text = pdftotext(render_invoice_pdf(inv, BRANDING, language="bn"), tmp_path)
    for expected in ("ইনভয়েস", "সর্বমোট", "উপমোট", "গ্রাহক আইডি", BENGALI_NAME, inv.number):
        assert expected in text, expected
    assert "১ ডিসে, ২০২৬" in text or "1 ডিসে, 2026" in text  # babel's medium date in Bengali
    assert "1,23,456.50" in text  # lakh grouping, babel's Bengali decimal pattern
    # the invoice's own language (recorded from the customer) is the default
    own = invoice(customer_name="Karim", language="bn")
    assert "সর্বমোট" in pdftotext(render_invoice_pdf(own, BRANDING), tmp_path)


def test_an_arabic_name_is_shaped_and_embedded(tmp_path: Path) -> None:
    pdf = render_invoice_pdf(invoice(customer_name="محمد عبد الله"), BRANDING)
    assert b"NotoNaskhArabic" in pdf
    text = pdftotext(pdf, tmp_path)
    assert "محمد" in text or "دمحم" in text  # poppler may give right-to-left runs reversed


def test_an_unknown_language_prints_in_the_default_one(tmp_path: Path) -> None:
    text = pdftotext(render_invoice_pdf(invoice(), BRANDING, language="fr"), tmp_path)
    assert "INVOICE" in text and "Total" in text


def test_the_isp_edits_the_template_and_the_pdf_follows(tmp_path: Path) -> None:
    own = tmp_path / "our-invoice.toml"
    own.write_text(
        '[style]\naccent = "#1B7F3B"\n'
        '[labels.en]\ntitle = "TAX INVOICE"\n'
        'payment_instructions = "Pay by bKash to 01700-000000, reference {number}."\n'
        '[labels.bn]\ntotal = "মোট প্রদেয়"\n',
        encoding="utf-8",
    )
    template = InvoiceTemplate.load(own)
    inv = invoice()
    text = pdftotext(render_invoice_pdf(inv, BRANDING, template=template), tmp_path)
    assert "TAX INVOICE" in text
    assert f"Pay by bKash to 01700-000000, reference {inv.number}." in text
    assert "Subtotal" in text  # what the file leaves out comes from the default
    bengali = pdftotext(
        render_invoice_pdf(inv, BRANDING, template=template, language="bn"), tmp_path
    )
    assert "মোট প্রদেয়" in bengali
    paid = pdftotext(render_invoice_pdf(inv, BRANDING, template=template, status="PAID"), tmp_path)
    assert "bKash" not in paid  # no payment instructions on a paid invoice


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('[labels.en]\ntitle = "INVOICE {customer}"\n', "no placeholder ['customer']"),
        ('[labels.en]\npay_note = "Pay {total"\n', "write {{ and }}"),
        ('[labels.en]\nheadline = "x"\n', "unknown keys ['headline']"),
        ('[labels.english]\ntitle = "x"\n', "not a 2-3 letter code"),
        ('[style]\naccent = "green"\n', "is not #RRGGBB"),
        ('default_language = "fr"\n', "has no labels"),
        ("[labels.en\n", "invoice template"),
        ('[labels.en]\ntitle = "a\\u0007b"\n', "control character"),
        ('[paper]\nsize = "A4"\n', "unknown sections"),
        ('[labels.en]\ntitle = "{number:{number.__class__}}"\n', "without a format"),
        ('[labels.en]\npay_note = "{total:>99999999999}"\n', "without a format"),
        ('[labels.en]\npay_note = "{total!r}"\n', "without a format"),
        ('[labels.en]\ntitle = "{number.__class__}"\n', "no placeholder"),
        ('[labels.en]\ntitle = "{0}"\n', "no placeholder"),
    ],
)
def test_a_bad_template_is_refused_with_the_key_and_the_reason(
    tmp_path: Path, content: str, why: str
) -> None:
    own = tmp_path / "bad.toml"
    own.write_text(content, encoding="utf-8")
    with pytest.raises(TemplateError, match=why.replace("[", r"\[").replace("{", r"\{")):
        InvoiceTemplate.load(own)


def test_a_missing_template_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="No such file"):
        InvoiceTemplate.load(tmp_path / "nowhere.toml")


def test_missing_fonts_say_which_package_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ISPBILL_PDF_FONTS_DIR", str(tmp_path))
    with pytest.raises(FontsMissing, match="fonts-noto-core"):
        render_invoice_pdf(invoice(customer_name=BENGALI_NAME), BRANDING)
    # a Latin invoice needs no font file at all
    assert render_invoice_pdf(invoice(), BRANDING).startswith(b"%PDF-")
