"""The demo ISP: two plans, two tax regions, three subscribers and a NAS on loopback."""

from __future__ import annotations

from typing import Any

from ispbill_app.client import ApiClient, ApiError

DEMO_NAS_SECRET = "demo-radius-secret"  # noqa: S105 - a published demo value, not a credential

PLANS = [
    {
        "plan_id": "fiber-100",
        "name": "Fiber 100",
        "currency": "USD",
        "monthly_fee": "40.00",
        "included_gb": 100,
        "overage_per_gb": "1.50",
    },
    {
        "plan_id": "home-25",
        "name": "Home 25",
        "currency": "USD",
        "monthly_fee": "25.00",
        "included_gb": 20,
        "overage_per_gb": "2.00",
    },
]
TAX_RATES = [
    {"region": "metro", "tax_name": "VAT", "rate": "0.15"},
    {"region": "rural", "tax_name": "VAT", "rate": "0.05"},
]
CUSTOMERS = [
    {
        "customer_id": "C1001",
        "name": "Alice Rahman",
        "email": "alice@example.net",
        "tax_region": "metro",
        "billing_address": "12 Lake Road, Metro City",
    },
    {
        "customer_id": "C1002",
        "name": "Bob Chowdhury",
        "email": "bob@example.net",
        "tax_region": "rural",
        "billing_address": "Village Market, Rural District",
    },
    {
        "customer_id": "C1003",
        "name": "Carol Das",
        "email": "carol@example.net",
        "tax_region": "metro",
        "billing_address": "7 Hill Lane, Metro City",
    },
]
SUBSCRIPTIONS = [
    {
        "subscription_id": "S1001",
        "customer_id": "C1001",
        "plan_id": "fiber-100",
        "radius_username": "alice",
        "started_on": "2026-01-01",
    },
    {
        "subscription_id": "S1002",
        "customer_id": "C1002",
        "plan_id": "home-25",
        "radius_username": "bob",
        "started_on": "2026-01-01",
    },
    {
        "subscription_id": "S1003",
        "customer_id": "C1003",
        "plan_id": "fiber-100",
        "radius_username": "carol",
        "started_on": "2026-01-01",
    },
]
NAS = [
    {
        "nas_id": "nas-demo-1",
        "name": "Demo BNG (loopback)",
        "ip_address": "127.0.0.1",
        "secret": DEMO_NAS_SECRET,
        "vendor": "mikrotik",
    },
]


def load_demo(client: ApiClient) -> dict[str, int]:
    """Idempotent: loading twice changes nothing. Returns how many of each kind are present;
    the API treats a repeated identical command as done, and answers 409 only for an id that
    exists with other details (which the demo leaves as it is)."""
    counts: dict[str, int] = {}
    steps: list[tuple[str, list[dict[str, Any]]]] = [
        ("/api/v1/plans", PLANS),
        ("/api/v1/tax-rates", TAX_RATES),
        ("/api/v1/customers", CUSTOMERS),
        ("/api/v1/subscriptions", SUBSCRIPTIONS),
        ("/api/v1/nas", NAS),
    ]
    for path, items in steps:
        present = 0
        for item in items:
            try:
                client.post(path, item)
                present += 1
            except ApiError as exc:
                if exc.status != 409:
                    raise
        counts[path.rsplit("/", 1)[-1]] = present
    return counts
