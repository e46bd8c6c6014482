"""Accounts: plans, customers, subscriptions and the NAS registry."""
