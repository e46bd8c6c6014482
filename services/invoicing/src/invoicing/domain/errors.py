"""Domain errors of invoicing: named refusals raised before any invoice is drafted."""

from __future__ import annotations


class InvoicingError(Exception):
    """Base of every rule invoicing refuses to break."""


class NotBillableInPeriod(InvoicingError):
    """The subscription was not active on any day of the billing period."""


class CurrencyMismatchInPlan(InvoicingError):
    """A plan's monthly fee and overage price are in different currencies."""


class InvalidSubscriptionDates(InvoicingError):
    """The subscription ended before it started."""


class InvalidUsage(InvoicingError):
    """Usage totals that cannot come from cumulative counters (negative octets)."""


class InvoicingNotFound(InvoicingError):
    """What a request names does not exist (a customer, an exemption)."""


class InvalidTaxRule(InvoicingError):
    """A tax rule or exemption that cannot be recorded (a date in the past, an end of what
    was never set)."""
