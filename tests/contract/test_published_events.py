"""Contracts between services: the published events' schemas, and what consumers rely on.

A producer that changes a published event's schema breaks every consumer that reads old events
from the ledger. Changing one means a new version (event_type(name, version + 1)) and an
upcaster; this test makes the change visible. To accept an intended, compatible change (a new
optional field), regenerate the snapshots with ISPBILL_UPDATE_SCHEMAS=1 and commit them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import ispbill_core.contracts  # noqa: F401 - registers the published events
from ispbill_core.events import DomainEvent, registered_event_types

pytestmark = pytest.mark.contract

SCHEMAS = Path(__file__).parent / "schemas"
PUBLISHED = {
    key: cls
    for key, cls in registered_event_types().items()
    if cls.__module__.startswith("ispbill_core.contracts")
}


def _schema(cls: type[DomainEvent]) -> dict[str, Any]:
    return cls.model_json_schema(mode="serialization")


@pytest.mark.parametrize(("name", "version"), sorted(PUBLISHED))
def test_published_schema_matches_the_snapshot(name: str, version: int) -> None:
    path = SCHEMAS / f"{name}.v{version}.json"
    schema = _schema(PUBLISHED[(name, version)])
    if os.environ.get("ISPBILL_UPDATE_SCHEMAS"):
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"no snapshot for {name} v{version}: run with ISPBILL_UPDATE_SCHEMAS=1"
    assert json.loads(path.read_text()) == schema, (
        f"{name} v{version} changed: consumers read old events of this version from the ledger."
        " Add a new version instead, or regenerate the snapshot for a compatible change."
    )


def test_every_snapshot_still_has_its_event() -> None:
    """Removing a published event type breaks replays of the ledger that holds it."""
    snapshots = {p.name for p in SCHEMAS.glob("*.json")}
    current = {f"{name}.v{version}.json" for name, version in PUBLISHED}
    assert snapshots <= current, f"published events removed: {sorted(snapshots - current)}"


def test_consumers_fields_exist_in_the_producers_events() -> None:
    """The fields each consumer reads, by event, are declared by the producer's model."""
    consumed = {
        # rating reads the collector's records
        ("AccountingRecordReceived", 1): {"record_id", "nas_id", "status", "acct_session_id",
                                          "username", "event_time", "session_time",
                                          "input_octets", "output_octets"},
        # ... and the routers' byte counters (subscribers without RADIUS)
        ("RouterCountersSampled", 1): {"router_id", "interface_key", "subscriber_hint",
                                       "username", "delta_in", "delta_out", "sampled_at",
                                       "previous_sampled_at"},
        # rating reads the username claims of accounts, their releases and username changes
        ("RadiusUsernameAssigned", 1): {"username", "customer_id", "subscription_id"},
        ("RadiusUsernameReleased", 1): {"username", "subscription_id", "released_on"},
        ("RadiusUsernameChanged", 1): {"subscription_id", "new_username", "effective_on"},
        # the collector's NAS registry reads NAS registrations
        ("NasRegistered", 1): {"nas_id", "ip_address", "secret", "require_message_authenticator"},
        ("NasRegistered", 2): {"nas_id", "ip_address", "secret_sealed",
                               "require_message_authenticator"},
        ("NasRemoved", 1): {"nas_id"},
        # invoicing reads plans, customers, subscriptions, rated usage and payments
        ("PlanDefined", 1): {"plan_id", "monthly_fee", "included_bytes", "overage_price",
                             "overage_unit_bytes"},
        ("CustomerRegistered", 1): {"customer_id", "name", "email", "tax_region",
                                    "billing_address"},
        # (rating too, and which source bills the subscription's usage)
        ("SubscriptionStarted", 1): {"subscription_id", "customer_id", "plan_id", "started_on",
                                     "radius_username", "usage_source"},
        # ... and the lifecycle, the plan versions and the customers' changed details
        ("SubscriptionPlanChanged", 1): {"plan_id", "effective_on"},
        ("SubscriptionSuspended", 1): {"effective_on"},
        ("SubscriptionResumed", 1): {"effective_on"},
        ("SubscriptionHoldPlaced", 1): {"hold_from", "hold_until"},
        ("SubscriptionTerminated", 1): {"effective_on"},
        ("PlanVersionPublished", 1): {"plan_id", "effective_from", "monthly_fee",
                                      "included_bytes", "overage_price", "overage_unit_bytes",
                                      "overage_increment"},
        ("CustomerDetailsChanged", 1): {"name", "email", "tax_region", "billing_address"},
        ("UsageRated", 1): {"customer_id", "subscription_id", "input_octets", "output_octets"},
        ("PaymentReceived", 1): {"payment_id", "customer_id", "invoice_id", "invoice_period",
                                 "amount", "received_at"},
        # the invoices projection reads allocations
        ("PaymentAllocated", 1): {"invoice_id", "payment_id", "amount_received"},
        # notifier and payments read issued invoices
        ("InvoiceIssued", 1): {"invoice_id", "number", "customer_id", "customer_name",
                               "customer_email", "period", "due_on", "currency", "total"},
    }  # fmt: skip
    for key, fields in consumed.items():
        declared = set(PUBLISHED[key].model_fields)
        assert fields <= declared, f"{key}: consumers read {sorted(fields - declared)}"


def test_subscriptions_and_samples_recorded_before_the_router_fields_still_decode() -> None:
    """SubscriptionStarted gained `usage_source`, RouterCountersSampled `previous_sampled_at`:
    what the ledger holds from before decodes as billed by RADIUS, and as a point in time."""
    from ispbill_core.contracts.accounts import SubscriptionStarted
    from ispbill_core.contracts.usage_collector import RouterCountersSampled

    started = SubscriptionStarted.model_validate_json(
        '{"subscription_id": "s-1", "customer_id": "c-1", "plan_id": "home",'
        ' "radius_username": "alice", "started_on": "2026-01-01"}'
    )
    assert started.usage_source == "radius"
    sample = RouterCountersSampled.model_validate_json(
        '{"router_id": "core-1", "interface_key": "ether5", "octets_in": 5, "octets_out": 6,'
        ' "delta_in": 1, "delta_out": 2, "sampled_at": "2026-03-01T12:00:00Z"}'
    )
    assert sample.previous_sampled_at is None


def test_events_recorded_before_the_optional_fields_still_decode() -> None:
    """CustomerRegistered and PlanDefined gained fields with defaults (a compatible v1
    change): what the ledger holds from before decodes, with those defaults."""
    from ispbill_core.contracts.accounts import CustomerRegistered, PlanDefined

    customer = CustomerRegistered.model_validate_json(
        '{"customer_id": "c-1", "name": "Alice", "email": "a@example.com",'
        ' "tax_region": "BD", "billing_address": ""}'
    )
    assert (customer.phone, customer.service_address, customer.account_type, customer.tags) == (
        "",
        "",
        "home",
        (),
    )
    plan = PlanDefined.model_validate_json(
        '{"plan_id": "home", "name": "Home", "monthly_fee": {"amount": "30.00",'
        ' "currency": "USD"}, "included_bytes": 0, "overage_price": {"amount": "1.00",'
        ' "currency": "USD"}, "overage_unit_bytes": 1000000000}'
    )
    assert plan.overage_increment == 1 and plan.time_bands == () and plan.download_bps is None
