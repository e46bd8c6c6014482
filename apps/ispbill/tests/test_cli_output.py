"""The CLI's tables: a cell too wide for the terminal wraps, it is never cut short."""

from __future__ import annotations

import json

import pytest

from ispbill_app.commands.invoices import show_invoice
from ispbill_app.commands.output import OutputFormat, print_data

pytestmark = pytest.mark.unit

LONG = "Home 25 monthly fee, prorated from the 12th after a plan change [upgrade] mid-cycle"
INVOICE = {
    "number": "INV-000001", "status": "issued", "customer_id": "C1",
    "customer_name": "Bob Chowdhury", "customer_email": "bob@example.com", "period": "2026-01",
    "issued_at": "2026-02-01T00:00:00Z", "due_on": "2026-02-15", "currency": "BDT",
    "lines": [{"description": LONG, "quantity": "1", "unit": "month",
               "amount": {"amount": "30.13"}}],
    "subtotal": {"amount": "30.13"},
    "taxes": [{"tax_name": "VAT", "rate": "0.15", "taxable": {"amount": "30.13"},
               "amount": {"amount": "4.52"}}],
    "total": {"amount": "34.65"},
}  # fmt: skip


def words(text: str) -> list[str]:
    return text.split()


def test_a_narrow_table_wraps_every_word_and_cuts_none(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ISPBILL_TABLE_WIDTH", "40")
    print_data([{"id": "C1", "d": LONG}], OutputFormat.table, [("ID", "id"), ("DESC", "d")])
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line.rstrip()) for line in out.splitlines()) <= 40
    assert len(out.splitlines()) > 2  # wrapped
    assert [w for w in words(out) if w not in ("ID", "DESC", "C1")] == words(LONG)


def test_an_invoice_line_is_shown_whole(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ISPBILL_TABLE_WIDTH", "60")
    show_invoice(INVOICE, OutputFormat.table)
    out = capsys.readouterr().out
    assert "…" not in out
    for word in words(LONG):
        assert word in out
    assert "VAT 15% on 30.13" in out and "34.65" in out and "Bob Chowdhury" in out
    show_invoice(INVOICE, OutputFormat.json)
    assert json.loads(capsys.readouterr().out) == INVOICE
