"""Events the accounts service publishes: plans, customers, subscriptions, NAS registry."""

from __future__ import annotations

from datetime import date

from pydantic import EmailStr, Field

from ispbill_core.events import DomainEvent, event_type
from ispbill_core.money import Money
from ispbill_core.sealing import Keyring

GIGABYTE = 10**9


def plan_stream(plan_id: str) -> str:
    return f"plan-{plan_id}"


def customer_stream(customer_id: str) -> str:
    return f"customer-{customer_id}"


def subscription_stream(subscription_id: str) -> str:
    return f"subscription-{subscription_id}"


def radius_user_stream(username: str) -> str:
    """One stream per RADIUS username: appending with NO_STREAM makes usernames unique."""
    return f"radius-user-{username}"


def nas_stream(nas_id: str) -> str:
    return f"nas-{nas_id}"


@event_type("PlanDefined", 1)
class PlanDefined(DomainEvent):
    """A flat monthly plan with included data and a price per started unit of overage."""

    plan_id: str
    name: str
    monthly_fee: Money
    included_bytes: int = Field(ge=0)
    overage_price: Money
    overage_unit_bytes: int = Field(default=GIGABYTE, gt=0)


@event_type("CustomerRegistered", 1)
class CustomerRegistered(DomainEvent):
    customer_id: str
    name: str
    email: EmailStr
    tax_region: str
    billing_address: str = ""


@event_type("SubscriptionStarted", 1)
class SubscriptionStarted(DomainEvent):
    subscription_id: str
    customer_id: str
    plan_id: str
    radius_username: str
    started_on: date


@event_type("RadiusUsernameAssigned", 1)
class RadiusUsernameAssigned(DomainEvent):
    username: str
    customer_id: str
    subscription_id: str


def nas_secret_context(nas_id: str) -> str:
    """What a NAS's sealed secret is bound to: it opens for this NAS and no other."""
    return f"nas:{nas_id}"


@event_type("NasRegistered", 1)
class NasRegisteredV1(DomainEvent):
    """Superseded by v2: a NAS registered before secrets were sealed, its RADIUS shared secret
    in plain text in the ledger. Still read (an upgraded ledger keeps working); never written."""

    nas_id: str
    name: str
    ip_address: str
    secret: str = Field(min_length=1)
    vendor: str = "generic"
    require_message_authenticator: bool = False


@event_type("NasRegistered", 2)
class NasRegistered(DomainEvent):
    """A NAS allowed to send accounting, or new details for one already registered (a later
    event in the NAS's stream replaces the earlier ones).

    `secret_sealed` is the RADIUS shared secret sealed (ispbill_core.sealing) for the context
    `nas_secret_context(nas_id)`; only processes holding the secrets key can open it.
    """

    nas_id: str
    name: str
    ip_address: str
    secret_sealed: str = Field(pattern=r"^sealed:v1:[0-9a-f]{8}:[A-Za-z0-9_-]+$")
    vendor: str = "generic"
    require_message_authenticator: bool = False


def nas_registration(
    keyring: Keyring,
    *,
    nas_id: str,
    name: str,
    ip_address: str,
    secret: str,
    vendor: str = "generic",
    require_message_authenticator: bool = False,
) -> NasRegistered:
    """The registration of a NAS, its plain-text secret sealed with `keyring` for this NAS."""
    return NasRegistered(
        nas_id=nas_id,
        name=name,
        ip_address=ip_address,
        secret_sealed=keyring.seal(secret.encode("utf-8"), nas_secret_context(nas_id)),
        vendor=vendor,
        require_message_authenticator=require_message_authenticator,
    )


@event_type("NasRemoved", 1)
class NasRemoved(DomainEvent):
    """A NAS taken out of service: its accounting is refused from then on, and its address is
    free for another NAS. Registering the id again puts it back."""

    nas_id: str
    reason: str = ""


#: Both versions, for readers that accept either (the collector's registry, the NAS listing).
AnyNasRegistered = NasRegistered | NasRegisteredV1
