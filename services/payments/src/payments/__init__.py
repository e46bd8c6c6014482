"""Payments: gateways, webhooks, manual entry, allocation to invoices."""
