"""Validated commands of the accounts service, turned into published events."""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
)

from accounts.domain.errors import InvalidPlan, InvalidPlanVersion, InvalidTopUp
from ispbill_core.contracts.accounts import (
    GIBIBYTE,
    GIGABYTE,
    AccountType,
    AnyNasRegistered,
    CustomerDetails,
    CustomerDetailsChanged,
    CustomerRegistered,
    FairUsageThreshold,
    NasRegistered,
    NasRegisteredV1,
    PlanDefined,
    PlanVersionPublished,
    SubscriptionStarted,
    TimeBand,
    TopUpProductDefined,
    nas_registration,
    nas_secret_context,
)
from ispbill_core.input_policy import (
    BILLING_DATE_SCHEMA,
    ID_PATTERN,
    REGION_MAX_LENGTH,
    REGION_PATTERN,
    Address,
    BillingDate,
    Currency,
    Email,
    ExpectedVersion,
    Label,
    MoneyText,
    Name,
    NasAddress,
    Phone,
    money_in,
    refused_character,
)
from ispbill_core.sealing import Keyring, SealingError

_PHONE = r"^(\+[1-9][0-9]{6,14})?$"
_TAG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_TEXT = r"^[^\x00-\x1f\x7f]*$"
MAX_TAGS = 20


def _sane_date(value: date) -> date:
    if not 2000 <= value.year <= 2099:
        raise ValueError("dates are between 2000-01-01 and 2099-12-31")
    return value


#: A day in the ISP's time zone, within the years a billing system can mean (the OpenAPI
#: document states the range as BillingDate's pattern).
SaneDate = Annotated[date, AfterValidator(_sane_date), WithJsonSchema(BILLING_DATE_SCHEMA)]
#: A reason written into the ledger for staff to read: one line, bounded.
Reason = Annotated[str, Field(min_length=1, max_length=200, pattern=_TEXT)]


def _tags(value: list[str]) -> list[str]:
    if len(value) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    for tag in value:
        if not _TAG.match(tag):
            raise ValueError(f"tag {tag!r} is not a lowercase slug [a-z0-9-], 1-40 characters")
    return list(dict.fromkeys(value))


Tags = Annotated[
    list[Annotated[str, Field(pattern=_TAG.pattern)]],
    Field(max_length=MAX_TAGS),
    AfterValidator(_tags),
]
_ID = ID_PATTERN
_USERNAME = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,253}")


def _radius_username(value: str) -> str:
    if not _USERNAME.fullmatch(value) or refused_character(value) is not None:
        raise ValueError("a RADIUS username is 1-253 printable characters without spaces")
    return value


#: A RADIUS User-Name: printable, no spaces (what Python's \s matches), no
#: character the text policy refuses; the pattern says it for the OpenAPI document.
RadiusUsername = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        json_schema_extra={
            "pattern": r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028-\u202f\u205f"
            r"\u2066-\u2069\u3000\ufeff]+$"
        },
    ),
    AfterValidator(_radius_username),
]


class DefinePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan_id: str = Field(pattern=_ID)
    name: Label
    currency: Currency
    monthly_fee: MoneyText = Field(description="decimal string, e.g. '29.99'")
    included_gb: int = Field(
        ge=0, le=10**9, description="data included per month, in GB (10^9 bytes)"
    )
    overage_per_gb: MoneyText = Field(
        description="price of each started GB beyond the included data"
    )
    prices_include_tax: StrictBool = Field(
        default=False,
        description="the prices include tax: invoices take the tax out of them (ADR 0029)",
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
            prices_include_tax=self.prices_include_tax,
        )


#: The language of a customer's invoices: "en", "bn", any language the ISP's invoice template
#: has labels for (others print in its default language); "": the default.
InvoiceLanguage = Annotated[
    str,
    Field(
        pattern=r"^([a-z]{2,3})?$",
        max_length=3,
        description='invoice language, "en", "bn"; "" for the ISP\'s default',
    ),
]


class RegisterCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=_ID)
    name: Name
    email: Email
    tax_region: str = Field(pattern=REGION_PATTERN, max_length=REGION_MAX_LENGTH)
    billing_address: Address = ""
    phone: Phone = Field(default="", description='"" or E.164, "+8801712345678"')
    service_address: Address = ""
    account_type: AccountType = "home"
    tags: Tags = Field(default_factory=list, description="lowercase slugs [a-z0-9-], at most 20")
    language: InvoiceLanguage = ""

    def to_event(self) -> CustomerRegistered:
        return CustomerRegistered(**self.model_dump())


class ChangeCustomer(BaseModel):
    """PATCH of a customer: the fields given replace the current ones, the others stay."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    tax_region: str | None = Field(
        default=None, pattern=REGION_PATTERN, max_length=REGION_MAX_LENGTH
    )
    billing_address: Address | None = None
    service_address: Address | None = None
    account_type: AccountType | None = None
    tags: Tags | None = None
    language: InvoiceLanguage | None = None
    #: the customer's `version` as read (GET): refused (409) if it changed since
    expected_version: ExpectedVersion | None = None

    def applied_to(self, current: CustomerDetails) -> CustomerDetailsChanged:
        changes = self.model_dump(exclude={"expected_version"}, exclude_none=True)
        details = current.model_dump(exclude=set(changes))
        return CustomerDetailsChanged(**details, **changes)


_PLAN_UNITS = {"GB": GIGABYTE, "GiB": GIBIBYTE}


class PublishPlanVersion(BaseModel):
    """A plan's next version, in force from `effective_from`: every term, none inherited."""

    model_config = ConfigDict(extra="forbid")

    effective_from: SaneDate
    name: Label
    currency: Currency
    monthly_fee: MoneyText = Field(description="decimal string, e.g. '29.99'")
    unit: Literal["GB", "GiB"] = Field(default="GB", description="GB = 10^9 bytes, GiB = 2^30")
    included_units: int = Field(ge=0, le=10**6, description="data included per month, in units")
    overage_price: MoneyText = Field(description="price of one unit beyond the included data")
    overage_increment: str = Field(
        default="1",
        description="overage is rounded up to a multiple of this fraction of a unit: '1' bills"
        " every started unit, '0.1' every started tenth; 1 divided by it is a whole number",
    )
    time_bands: list[TimeBand] = Field(default_factory=list, max_length=24)
    fair_usage: list[FairUsageThreshold] = Field(default_factory=list, max_length=10)
    download_bps: int | None = Field(default=None, gt=0, le=10**12)
    upload_bps: int | None = Field(default=None, gt=0, le=10**12)
    prices_include_tax: StrictBool = Field(
        default=False,
        description="the prices include tax: invoices take the tax out of them (ADR 0029)",
    )

    def to_event(self, plan_id: str, version: int) -> PlanVersionPublished:
        try:
            fee = money_in(self.monthly_fee, self.currency)
            overage = money_in(self.overage_price, self.currency)
            increment = Decimal(self.overage_increment)
        except (ValueError, ArithmeticError, InvalidOperation) as exc:
            raise InvalidPlanVersion(str(exc)) from None
        if fee.amount < 0 or overage.amount < 0:
            raise InvalidPlanVersion("prices cannot be negative")
        if not (0 < increment <= 1) or (1 / increment) % 1 != 0:
            raise InvalidPlanVersion("overage_increment is 1, or 1 divided by a whole number")
        for band in self.time_bands:
            if band.start == band.end:
                raise InvalidPlanVersion(f"time band {band.name!r} starts where it ends")
            if band.multiplier != "free" and not (0 <= band.multiplier <= 100):
                raise InvalidPlanVersion(f"time band {band.name!r}: multiplier 0..100 or 'free'")
        if len({b.name for b in self.time_bands}) != len(self.time_bands):
            raise InvalidPlanVersion("time band names repeat")
        thresholds = [t.after_bytes for t in self.fair_usage]
        if thresholds != sorted(set(thresholds)):
            raise InvalidPlanVersion("fair-usage thresholds are in increasing order of bytes")
        return PlanVersionPublished(
            plan_id=plan_id,
            version=version,
            effective_from=self.effective_from,
            name=self.name,
            monthly_fee=fee,
            included_bytes=self.included_units * _PLAN_UNITS[self.unit],
            overage_price=overage,
            overage_unit_bytes=_PLAN_UNITS[self.unit],
            overage_increment=increment,
            time_bands=tuple(self.time_bands),
            fair_usage=tuple(self.fair_usage),
            download_bps=self.download_bps,
            upload_bps=self.upload_bps,
            prices_include_tax=self.prices_include_tax,
        )


class DefineTopUpProduct(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(pattern=_ID)
    name: Label
    currency: Currency
    price: MoneyText = Field(description="decimal string, e.g. '5.00'")
    bytes: int = Field(gt=0, le=10**15)
    validity_days: int = Field(ge=1, le=366)

    def to_event(self) -> TopUpProductDefined:
        try:
            price = money_in(self.price, self.currency)
        except (ValueError, ArithmeticError) as exc:
            raise InvalidTopUp(str(exc)) from None
        if price.amount < 0:
            raise InvalidTopUp("a price cannot be negative")
        return TopUpProductDefined(
            product_id=self.product_id,
            name=self.name,
            price=price,
            bytes=self.bytes,
            validity_days=self.validity_days,
        )


class PurchaseTopUp(BaseModel):
    """Buy a data top-up for a subscription. `purchase_id` is the caller's idempotency key:
    the same purchase sent again (a retry, a double click) is recorded, and charged, once."""

    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(pattern=_ID)
    purchase_id: str = Field(pattern=_ID)


class _Versioned(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the subscription's `version` as read (GET): refused (409) if it changed since; without
    #: it the change is based on the version current when it is applied
    expected_version: ExpectedVersion | None = None


class ChangePlan(_Versioned):
    plan_id: str = Field(pattern=_ID)
    effective: Literal["now", "next_cycle"] | SaneDate = Field(
        default="now",
        description='"now" (today in the ISP\'s time zone), "next_cycle" (the first day of'
        " next month) or a date",
    )
    reason: str = Field(default="", max_length=200, pattern=_TEXT)


class SuspendSubscription(_Versioned):
    reason: Reason
    effective_on: SaneDate | None = Field(default=None, description="default: today")


class ResumeSubscription(_Versioned):
    reason: Reason
    effective_on: SaneDate | None = Field(default=None, description="default: today")


class PlaceHold(_Versioned):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    hold_from: SaneDate = Field(alias="from")
    hold_until: SaneDate = Field(alias="until")
    reason: Reason


class TerminateSubscription(_Versioned):
    effective_on: SaneDate = Field(description="the last day of service; it is charged")
    reason: Reason


class ChangeUsername(_Versioned):
    radius_username: RadiusUsername


class StartSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription_id: str = Field(pattern=_ID)
    customer_id: str = Field(pattern=_ID)
    plan_id: str = Field(pattern=_ID)
    radius_username: RadiusUsername
    started_on: BillingDate
    usage_source: Literal["radius", "router"] = Field(
        default="radius",
        description='what measures its usage for billing: "radius" (accounting from a NAS) or'
        ' "router" (a router\'s byte counters: static-IP and queue customers without RADIUS)',
    )

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
    ip_address: NasAddress
    secret: str = Field(min_length=6, max_length=128)


class RegisterNas(_NasDetails):
    nas_id: str = Field(pattern=_ID)
    vendor: str = Field(default="generic", max_length=40, pattern=r"^[A-Za-z0-9_.-]*$")
    require_message_authenticator: StrictBool = False

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
    require_message_authenticator: StrictBool
    #: the NAS's `version` as read (GET /api/v1/nas): the change is refused (409) if the NAS
    #: was changed since, rather than undo that other change
    expected_version: ExpectedVersion | None = None

    def for_nas(self, nas_id: str) -> RegisterNas:
        return RegisterNas(nas_id=nas_id, **self.model_dump(exclude={"expected_version"}))
