"""The accounts command models: what a clerk may type, and what is refused."""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal

import pytest
from pydantic import ValidationError

from accounts.domain.commands import DefinePlan, RegisterCustomer, RegisterNas, StartSubscription
from accounts.domain.errors import InvalidPlan
from ispbill_core.contracts.accounts import GIGABYTE, nas_secret_context
from ispbill_core.sealing import Keyring

pytestmark = pytest.mark.unit


def plan(**overrides: object) -> DefinePlan:
    fields: dict[str, object] = {
        "plan_id": "home-50",
        "name": "Home 50",
        "currency": "USD",
        "monthly_fee": "29.99",
        "included_gb": 50,
        "overage_per_gb": "1.50",
    }
    fields.update(overrides)
    return DefinePlan(**fields)


def test_a_plan_becomes_exact_money_and_bytes() -> None:
    event = plan().to_event()
    assert event.monthly_fee.amount == Decimal("29.99")
    assert event.overage_price.amount == Decimal("1.50")
    assert event.included_bytes == 50 * GIGABYTE
    assert event.overage_unit_bytes == GIGABYTE


@pytest.mark.parametrize(("fee", "expected"), [("30", "30.00"), ("0.1", "0.10"), ("100", "100.00")])
def test_decimal_strings_are_fine(fee: str, expected: str) -> None:
    assert plan(monthly_fee=fee).to_event().monthly_fee.amount == Decimal(expected)


@pytest.mark.parametrize(
    "overrides",
    [
        {"monthly_fee": "1.001"},
    ],
)
def test_negative_or_out_of_currency_prices_are_refused(overrides: dict[str, str]) -> None:
    with pytest.raises(InvalidPlan):
        plan(**overrides).to_event()


def test_an_unknown_currency_is_refused_with_the_command() -> None:
    # the OpenAPI document lists the known currencies (an enum), so the model refuses others
    with pytest.raises(ValueError, match="unknown currency"):
        plan(currency="XXX")


@pytest.mark.parametrize(
    "overrides",
    [
        {"monthly_fee": 29.99},  # a float is not a decimal string
        {"monthly_fee": 30},  # nor is a JSON integer
        {"monthly_fee": "abc"},
        {"monthly_fee": "NaN"},
        {"overage_per_gb": "Infinity"},
        {"monthly_fee": "1e2"},
        {"monthly_fee": "+1"},
        {"monthly_fee": " 1"},
        {"monthly_fee": "\u09e7\u09e8"},  # Bengali digits: Decimal() would read 12
        {"monthly_fee": "1" * 30},
        {"monthly_fee": "1000000000000.01"},
        {"monthly_fee": "-1.00"},
        {"overage_per_gb": "-0.01"},
        {"name": "Home\n50"},
        {"included_gb": -1},
        {"plan_id": "has space"},
        {"plan_id": ""},
        {"name": ""},
        {"currency": "US"},
        {"unexpected": "field"},
    ],
)
def test_invalid_plan_commands_are_refused_by_the_model(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        plan(**overrides)


def test_a_customer_needs_a_real_email_address() -> None:
    ok = RegisterCustomer(
        customer_id="c-1", name="Alice", email="alice@example.com", tax_region="BD"
    )
    assert ok.to_event().email == "alice@example.com"
    for bad in ["alice", "alice@", "@example.com", "alice example.com", ""]:
        with pytest.raises(ValidationError):
            RegisterCustomer(customer_id="c-1", name="Alice", email=bad, tax_region="BD")


@pytest.mark.parametrize("ip", ["10.0.0.1", "2001:db8::1"])
def test_a_nas_has_a_valid_ip_address(ip: str) -> None:
    nas = RegisterNas(nas_id="nas-1", name="edge", ip_address=ip, secret="s3cret!")
    assert nas.to_event(Keyring([os.urandom(64)])).ip_address == ip


def test_a_nas_secret_is_sealed_for_that_nas_in_its_event() -> None:
    keyring = Keyring([os.urandom(64)])
    cmd = RegisterNas(nas_id="nas-1", name="edge", ip_address="10.0.0.1", secret="s3cret!")
    event = cmd.to_event(keyring)
    assert "s3cret!" not in event.model_dump_json()
    assert keyring.open(event.secret_sealed, nas_secret_context("nas-1")) == b"s3cret!"
    assert cmd.to_event(keyring) == event  # the same command, the same event


@pytest.mark.parametrize("ip", ["10.0.0.256", "not-an-ip", "", "10.0.0"])
def test_a_bad_nas_ip_address_is_refused(ip: str) -> None:
    with pytest.raises(ValidationError):
        RegisterNas(nas_id="nas-1", name="edge", ip_address=ip, secret="s3cret!")


def test_a_nas_secret_is_not_too_short() -> None:
    with pytest.raises(ValidationError):
        RegisterNas(nas_id="nas-1", name="edge", ip_address="10.0.0.1", secret="abc")


@pytest.mark.parametrize("username", ["", "has space", "tab\there", "nul\x00"])
def test_a_radius_username_is_printable_without_spaces(username: str) -> None:
    with pytest.raises(ValidationError):
        StartSubscription(
            subscription_id="sub-1",
            customer_id="c-1",
            plan_id="home-50",
            radius_username=username,
            started_on=date(2026, 1, 1),
        )


def test_an_ipv4_mapped_nas_address_is_kept_as_ipv4() -> None:
    """The collector sees a dual-stack socket's IPv4-mapped source as plain IPv4."""
    nas = RegisterNas(nas_id="nas-1", name="edge", ip_address="::ffff:10.0.0.1", secret="s3cret!")
    assert nas.ip_address == "10.0.0.1"
