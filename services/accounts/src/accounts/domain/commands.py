"""Validated commands of the accounts service, turned into published events."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from accounts.domain.errors import InvalidPlan
from ispbill_core.contracts.accounts import (
    GIGABYTE,
    AnyNasRegistered,
    CustomerRegistered,
    NasRegistered,
    NasRegisteredV1,
    PlanDefined,
    SubscriptionStarted,
    nas_registration,
    nas_secret_context,
)
from ispbill_core.input_policy import (
    ID_PATTERN,
    Address,
    BillingDate,
    Email,
    Label,
    MoneyText,
    Name,
    money_in,
    refused_character,
    unicast_address,
)
from ispbill_core.sealing import Keyring, SealingError

_ID = ID_PATTERN
_USERNAME = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,253}")


class DefinePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan_id: str = Field(pattern=_ID)
    name: Label
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    monthly_fee: MoneyText = Field(description="decimal string, e.g. '29.99'")
    included_gb: int = Field(
        ge=0, le=10**9, description="data included per month, in GB (10^9 bytes)"
    )
    overage_per_gb: MoneyText = Field(
        description="price of each started GB beyond the included data"
    )

    def to_event(self) -> PlanDefined:
        try:
            fee = money_in(self.monthly_fee, self.currency, allow_negative=True)
            overage = money_in(self.overage_per_gb, self.currency, allow_negative=True)
        except (ValueError, ArithmeticError) as exc:
            raise InvalidPlan(str(exc)) from None
        if fee.amount < 0 or overage.amount < 0:
            raise InvalidPlan("prices cannot be negative")
        return PlanDefined(
            plan_id=self.plan_id,
            name=self.name,
            monthly_fee=fee,
            included_bytes=self.included_gb * GIGABYTE,
            overage_price=overage,
            overage_unit_bytes=GIGABYTE,
        )


class RegisterCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=_ID)
    name: Name
    email: Email
    tax_region: str = Field(pattern=_ID)
    billing_address: Address = ""

    def to_event(self) -> CustomerRegistered:
        return CustomerRegistered(**self.model_dump())


class StartSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription_id: str = Field(pattern=_ID)
    customer_id: str = Field(pattern=_ID)
    plan_id: str = Field(pattern=_ID)
    radius_username: str = Field(max_length=253)
    started_on: BillingDate

    @field_validator("radius_username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not _USERNAME.fullmatch(value) or refused_character(value) is not None:
            raise ValueError("a RADIUS username is 1-253 printable characters without spaces")
        return value

    def to_event(self) -> SubscriptionStarted:
        return SubscriptionStarted(**self.model_dump())


def nas_address(value: str) -> str:
    """One spelling per address, as the collector looks NASes up: IPv4-mapped IPv6 (what a
    dual-stack socket reports) is plain IPv4. For addresses already recorded (any address)."""
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class _NasDetails(BaseModel):
    """What registering and changing a NAS both check: its name, address and secret."""

    model_config = ConfigDict(extra="forbid")

    name: Label
    ip_address: str = Field(max_length=64, description="a unicast address (loopback accepted)")
    secret: str = Field(min_length=6, max_length=128)

    @field_validator("ip_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        return unicast_address(value)


class RegisterNas(_NasDetails):
    nas_id: str = Field(pattern=_ID)
    vendor: str = Field(default="generic", max_length=40, pattern=r"^[A-Za-z0-9_.-]*$")
    require_message_authenticator: bool = False

    def to_event(self, keyring: Keyring) -> NasRegistered:
        """The event, the secret sealed for this NAS: the ledger never holds it in plain text."""
        return nas_registration(keyring, **self.model_dump())

    def describes(self, registered: AnyNasRegistered, keyring: Keyring) -> bool:
        """Whether a recorded registration says what this command says, the secret included
        (opened: it may have been sealed with an earlier key, or not at all)."""
        if isinstance(registered, NasRegisteredV1):
            secret = registered.secret.encode("utf-8")
        else:
            try:
                secret = keyring.open(registered.secret_sealed, nas_secret_context(self.nas_id))
            except SealingError:
                return False
        details = registered.model_dump(exclude={"secret", "secret_sealed"})
        # A registration from before addresses were normalised may spell an IPv4-mapped one.
        details["ip_address"] = nas_address(details["ip_address"])
        return secret == self.secret.encode("utf-8") and details == self.model_dump(
            exclude={"secret"}
        )


class ChangeNas(_NasDetails):
    """New details for a registered NAS (a replaced router, a new secret): every one of them,
    none defaulted, so that a change that leaves a field out cannot quietly turn off the
    Message-Authenticator requirement; the NAS id is the one in the path."""

    vendor: str = Field(max_length=40, pattern=r"^[A-Za-z0-9_.-]*$")
    require_message_authenticator: bool
    #: the NAS's `version` as read (GET /api/v1/nas): the change is refused (409) if the NAS
    #: was changed since, rather than undo that other change
    expected_version: int | None = Field(default=None, ge=0)

    def for_nas(self, nas_id: str) -> RegisterNas:
        return RegisterNas(nas_id=nas_id, **self.model_dump(exclude={"expected_version"}))
