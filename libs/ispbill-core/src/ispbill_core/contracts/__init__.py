"""Published events: one module per producing service; consumers import them from here."""

from ispbill_core.contracts import accounts, invoicing, payments, rating, usage_collector

__all__ = ["accounts", "invoicing", "payments", "rating", "usage_collector"]
