"""Notifier: e-mail (and later SMS) reacting to ledger events."""
