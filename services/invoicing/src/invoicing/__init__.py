"""Invoicing: bill runs, proration, tax, gapless numbering, invoice PDFs."""
