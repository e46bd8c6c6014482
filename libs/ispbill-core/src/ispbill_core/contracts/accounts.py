"""Events the accounts service publishes: plans, customers, subscriptions, NAS registry."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field

from ispbill_core.events import DomainEvent, event_type
from ispbill_core.money import Money
from ispbill_core.sealing import Keyring

GIGABYTE = 10**9
GIBIBYTE = 2**30


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


def topup_product_stream(product_id: str) -> str:
    return f"topup-product-{product_id}"


def subscription_topups_stream(subscription_id: str) -> str:
    """A subscription's data top-ups, kept apart from its lifecycle stream."""
    return f"subscription-topups-{subscription_id}"


class TimeBand(BaseModel):
    """A time-of-day band: usage between `start` and `end` (local time, "HH:MM", end exclusive;
    an end before the start wraps past midnight) counts `multiplier` times, or not at all when
    "free". Recorded for rating; not applied yet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=40)
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    multiplier: Literal["free"] | Decimal


class FairUsageThreshold(BaseModel):
    """Past `after_bytes` in a period the subscriber is throttled to `rate_limit`
    ("download/upload", e.g. "2M/2M", as RADIUS rate-limit attributes spell it). Recorded for
    the network; not applied yet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    after_bytes: int = Field(gt=0)
    rate_limit: str = Field(pattern=r"^[0-9]{1,6}[kKMG]?/[0-9]{1,6}[kKMG]?$")


class PlanTerms(DomainEvent):
    """What a plan version sets: the prices invoicing charges, and what rating and the network
    need later. Fields after `overage_unit_bytes` were added with defaults that describe a
    plan recorded before them (no bands, no fair-usage limits, no rate limits)."""

    plan_id: str
    name: str
    monthly_fee: Money
    included_bytes: int = Field(ge=0)
    overage_price: Money
    overage_unit_bytes: int = Field(default=GIGABYTE, gt=0)
    #: overage is rounded UP to a multiple of this fraction of a unit: 1 bills every started
    #: unit, 0.1 every started tenth of one
    overage_increment: Decimal = Field(default=Decimal(1), gt=0, le=1)
    time_bands: tuple[TimeBand, ...] = ()
    fair_usage: tuple[FairUsageThreshold, ...] = ()
    download_bps: int | None = Field(default=None, gt=0)
    upload_bps: int | None = Field(default=None, gt=0)
    #: the prices include tax: invoicing takes the tax out of them instead of adding it
    #: (ADR 0029); the customer pays the price whatever their region's rates
    prices_include_tax: bool = False


@event_type("PlanDefined", 1)
class PlanDefined(PlanTerms):
    """A plan's first version (version 1), in force from the beginning: a flat monthly fee
    with included data and a price per started unit of overage."""


@event_type("PlanVersionPublished", 1)
class PlanVersionPublished(PlanTerms):
    """A later version of a plan (2, 3, ...), in force from `effective_from` (a day in the
    ISP's time zone) until the next version's. Invoices already issued keep their lines."""

    version: int = Field(ge=2)
    effective_from: date


@event_type("TopUpProductDefined", 1)
class TopUpProductDefined(DomainEvent):
    """A data top-up a subscriber can buy: `bytes` more data, valid `validity_days` days."""

    product_id: str
    name: str
    price: Money
    bytes: int = Field(gt=0)
    validity_days: int = Field(ge=1, le=366)


@event_type("TopUpPurchased", 1)
class TopUpPurchased(DomainEvent):
    """A data top-up bought for a subscription: `bytes` more data usable from `valid_from`
    until `valid_until` (exclusive), after the plan's included data. `purchase_id` is the
    buyer's idempotency key: the same purchase sent twice is recorded, and charged, once."""

    purchase_id: str
    subscription_id: str
    customer_id: str
    product_id: str
    price: Money
    bytes: int = Field(gt=0)
    valid_from: AwareDatetime
    valid_until: AwareDatetime


AccountType = Literal["home", "business", "corporate"]


class CustomerDetails(DomainEvent):
    """Everything a customer record says. The fields after `billing_address` were added with
    defaults, so customers registered before them still decode."""

    customer_id: str
    name: str
    email: EmailStr
    tax_region: str
    billing_address: str = ""
    phone: str = ""
    service_address: str = ""
    account_type: AccountType = "home"
    tags: tuple[str, ...] = ()
    #: the language of the customer's invoices, a 2-3 letter code ("en", "bn"); "": the
    #: ISP's default (the invoice template's `default_language`)
    language: str = Field(default="", pattern=r"^([a-z]{2,3})?$")


@event_type("CustomerRegistered", 1)
class CustomerRegistered(CustomerDetails):
    """A new customer."""


@event_type("CustomerDetailsChanged", 1)
class CustomerDetailsChanged(CustomerDetails):
    """New details for a customer: all of them, replacing the earlier ones (one event per
    edit, whichever fields it touched, so a reader never merges partial updates)."""


class CustomerRecord(CustomerDetails):
    """A customer's details as a reader takes them back from the ledger (projections): every
    field checked as the events' model does, except the e-mail's form, which was checked when
    the event was recorded. email-validator costs about 90 us a call, the rest of the record
    about 5; a rebuild folds every customer. Not an event type: never written."""

    email: str


#: What measures a subscription's usage for billing: RADIUS accounting (PPPoE, hotspot, any
#: NAS session), or a router's byte counters (static-IP and queue customers without RADIUS).
UsageSource = Literal["radius", "router"]


@event_type("SubscriptionStarted", 1)
class SubscriptionStarted(DomainEvent):
    subscription_id: str
    customer_id: str
    plan_id: str
    radius_username: str
    started_on: date
    #: which source's usage is billed; the other, when it reports the subscriber too, is only
    #: compared (rating's discrepancy report). Added later: earlier subscriptions are "radius".
    usage_source: UsageSource = "radius"


@event_type("RadiusUsernameAssigned", 1)
class RadiusUsernameAssigned(DomainEvent):
    """The first event of a username's stream, or the first after a release: the username is
    this subscription's (from its start, or from the RadiusUsernameChanged naming it)."""

    username: str
    customer_id: str
    subscription_id: str


@event_type("RadiusUsernameReleased", 1)
class RadiusUsernameReleased(DomainEvent):
    """The subscription stopped using the username: its usage up to and including
    `released_on` still rates to it; another subscription may claim the username."""

    username: str
    subscription_id: str
    released_on: date


@event_type("SubscriptionPlanChanged", 1)
class SubscriptionPlanChanged(DomainEvent):
    """From `effective_on` (inclusive) the subscription is on `plan_id`."""

    subscription_id: str
    from_plan_id: str
    plan_id: str
    effective_on: date
    reason: str = ""


@event_type("SubscriptionSuspended", 1)
class SubscriptionSuspended(DomainEvent):
    """Suspended by staff from `effective_on` (inclusive) until resumed: not charged."""

    subscription_id: str
    effective_on: date
    reason: str


@event_type("SubscriptionResumed", 1)
class SubscriptionResumed(DomainEvent):
    """In service again from `effective_on` (inclusive), charged from that day."""

    subscription_id: str
    effective_on: date
    reason: str


@event_type("SubscriptionHoldPlaced", 1)
class SubscriptionHoldPlaced(DomainEvent):
    """A vacation hold: no service and no charge from `hold_from` to `hold_until`, both
    inclusive; the subscription resumes by itself the day after."""

    subscription_id: str
    hold_from: date
    hold_until: date
    reason: str


@event_type("SubscriptionTerminated", 1)
class SubscriptionTerminated(DomainEvent):
    """`effective_on` is the last day of service, and is charged; nothing follows."""

    subscription_id: str
    effective_on: date
    reason: str


@event_type("RadiusUsernameChanged", 1)
class RadiusUsernameChanged(DomainEvent):
    """From `effective_on` (inclusive) the subscription's usage arrives as `new_username`."""

    subscription_id: str
    customer_id: str
    old_username: str
    new_username: str
    effective_on: date


#: Events after SubscriptionStarted in a subscription's stream.
SubscriptionChange = (
    SubscriptionPlanChanged
    | SubscriptionSuspended
    | SubscriptionResumed
    | SubscriptionHoldPlaced
    | SubscriptionTerminated
    | RadiusUsernameChanged
)


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
