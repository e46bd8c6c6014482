"""Import customers and their subscriptions from another system's spreadsheet, row by row.

Each row is checked with the same command models the API uses (RegisterCustomer,
StartSubscription) and against the ledger (plan and tax region exist, ids and usernames not
taken with other details). Valid rows are recorded with the event ids the API would give the
same command, so an import run twice, or a row also entered by hand, records nothing twice:
the second run finds every row "unchanged". A chunk's events go in one `append_many` (one
commit for hundreds of rows); should that fail because someone else wrote one of its streams
meanwhile, the rows are recorded one by one and the row that lost is reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from accounts.application.lifecycle import radius_username_key_stream
from accounts.domain.commands import RegisterCustomer, StartSubscription
from accounts.domain.events import RadiusUsernameReserved
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import (
    RadiusUsernameAssigned,
    customer_stream,
    plan_stream,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import tax_region_levels, tax_region_stream
from ispbill_core.events import DomainEvent, NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM, EventIdConflict, EventStore, WrongExpectedVersion
from ispbill_core.input_policy import radius_username_key

#: Rows per request: a chunk is one transaction and one response.
MAX_ROWS = 1000

_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_TAG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
ACCOUNT_TYPES = ("home", "business", "corporate")
MAX_TAGS = 20
_SUBSCRIPTION_COLUMNS = ("subscription_id", "plan_id", "radius_username", "started_on")
#: Customer columns that the agreed CSV has and older RegisterCustomer models may not.
_NEWER_CUSTOMER_COLUMNS = ("phone", "service_address", "account_type", "tags")


class CustomerRow(BaseModel):
    """One spreadsheet row as read: every column text, empty when blank. Spaces around a
    value (a spreadsheet's habit) are dropped; spaces inside an id make it invalid."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    row: int = Field(ge=1, description="row number in the file, for the report")
    customer_id: str = Field(default="", max_length=200)
    name: str = Field(default="", max_length=1000)
    email: str = Field(default="", max_length=1000)
    phone: str = Field(default="", max_length=100)
    tax_region: str = Field(default="", max_length=200)
    billing_address: str = Field(default="", max_length=2000)
    service_address: str = Field(default="", max_length=2000)
    account_type: str = Field(default="", max_length=100)
    tags: str = Field(default="", max_length=2000, description='";"-separated')
    subscription_id: str = Field(default="", max_length=200)
    plan_id: str = Field(default="", max_length=200)
    radius_username: str = Field(default="", max_length=300)
    started_on: str = Field(default="", max_length=100, description="YYYY-MM-DD")


RowStatus = Literal["created", "unchanged", "invalid"]


class RowResult(BaseModel):
    row: int
    #: created: something of it recorded (or, in a dry run, would be); unchanged: the ledger
    #: holds it already; invalid: nothing of it recorded, `errors` say why
    status: RowStatus
    customer_id: str
    errors: list[str] = Field(default_factory=list)
    #: recorded, but some of its columns could not be (a server older than the column)
    warnings: list[str] = Field(default_factory=list)


@dataclass
class _Checked:
    row: CustomerRow
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: (stream, event) to create, in order: customer, username claim, subscription
    writes: list[tuple[str, DomainEvent]] = field(default_factory=list)


def _validation_errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors()]


def _customer_command(row: CustomerRow, checked: _Checked) -> RegisterCustomer | None:
    fields: dict[str, Any] = {
        "customer_id": row.customer_id,
        "name": row.name,
        "email": row.email,
        "tax_region": row.tax_region,
        "billing_address": row.billing_address,
    }
    tags = [t.strip() for t in row.tags.split(";") if t.strip()]
    newer: dict[str, Any] = {
        "phone": row.phone.strip(),
        "service_address": row.service_address,
        "account_type": row.account_type.strip() or "home",
        "tags": tags,
    }
    supported = RegisterCustomer.model_fields
    # The agreed formats, checked here too, so that a row is judged the same on a server
    # whose customers do not have these fields yet.
    if newer["phone"] and not _PHONE.match(newer["phone"]):
        checked.errors.append(f"phone: {row.phone!r} is not a phone number like +8801712345678")
    if newer["account_type"] not in ACCOUNT_TYPES:
        checked.errors.append(
            f"account_type: {row.account_type!r} is not one of home, business, corporate"
        )
    bad_tags = [t for t in tags if not _TAG.match(t)]
    if bad_tags:
        checked.errors.append(f"tags: {', '.join(map(repr, bad_tags))} not lowercase slugs")
    if len(tags) > MAX_TAGS:
        checked.errors.append(f"tags: {len(tags)} tags, at most {MAX_TAGS}")
    for name, value in newer.items():
        if name in supported:
            fields[name] = value
        elif value and value != "home":
            checked.warnings.append(f"{name} not recorded: this server's customers have no {name}")
    try:
        return RegisterCustomer(**fields)
    except ValidationError as exc:
        checked.errors += _validation_errors(exc)
        return None


def _subscription_command(row: CustomerRow, checked: _Checked) -> StartSubscription | None:
    given = {name: getattr(row, name).strip() for name in _SUBSCRIPTION_COLUMNS}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        checked.errors.append(f"a subscription needs {', '.join(missing)} too")
        return None
    try:
        return StartSubscription(customer_id=row.customer_id, **given)
    except ValidationError as exc:
        checked.errors += _validation_errors(exc)
        return None


class _Ledger:
    """What the rows are checked against, each stream read once per request."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._exists: dict[str, bool] = {}
        self._first: dict[str, DomainEvent | None] = {}

    async def exists(self, stream: str) -> bool:
        if stream not in self._exists:
            self._exists[stream] = await self.store.stream_version(stream) is not None
        return self._exists[stream]

    async def first(self, stream: str) -> DomainEvent | None:
        if stream not in self._first:
            found = await self.store.read_stream(stream, limit=1)
            self._first[stream] = found[0].decode() if found else None
        return self._first[stream]


async def _check(
    row: CustomerRow,
    ledger: _Ledger,
    claimed: dict[str, tuple[str, DomainEvent, int]],
) -> _Checked:
    """Judge one row; `claimed` holds the streams earlier rows of this request create."""
    checked = _Checked(row)
    customer = _customer_command(row, checked)
    subscription = _subscription_command(row, checked)
    if checked.errors:
        return checked
    assert customer is not None
    if not any(
        [
            await ledger.exists(tax_region_stream(level))
            for level in tax_region_levels(customer.tax_region)
        ]
    ):
        checked.errors.append(f"unknown region {customer.tax_region!r} (no tax rule for it)")
    if subscription is not None and not await ledger.exists(plan_stream(subscription.plan_id)):
        checked.errors.append(f"unknown plan {subscription.plan_id!r}")
    wanted: list[tuple[str, DomainEvent, str, str]] = [
        (
            customer_stream(customer.customer_id),
            customer.to_event(),
            "customer",
            customer.customer_id,
        )
    ]
    if subscription is not None:
        started = subscription.to_event()
        claim = RadiusUsernameAssigned(
            username=started.radius_username,
            customer_id=started.customer_id,
            subscription_id=started.subscription_id,
        )
        reservation = RadiusUsernameReserved(
            key=radius_username_key(claim.username),
            username=claim.username,
            customer_id=claim.customer_id,
            subscription_id=claim.subscription_id,
        )
        wanted += [
            # the case-folded key first, as the API claims it: `Alice` and `alice` collide
            (
                radius_username_key_stream(claim.username),
                reservation,
                "RADIUS username",
                claim.username,
            ),
            (radius_user_stream(claim.username), claim, "RADIUS username", claim.username),
            (
                subscription_stream(started.subscription_id),
                started,
                "subscription",
                started.subscription_id,
            ),
        ]
    for stream, event, what, key in wanted:
        earlier = claimed.get(stream)
        if earlier is not None:
            if earlier[1] != event:
                checked.errors.append(
                    f"duplicate {what} {key!r}: row {earlier[2]} has it with other details"
                )
            continue
        recorded = await ledger.first(stream)
        if recorded is None:
            checked.writes.append((stream, event))
        elif recorded != event:
            if what == "RADIUS username":
                checked.errors.append(
                    f"RADIUS username {key!r} is taken (usernames are unique regardless of case)"
                )
            else:
                checked.errors.append(f"{what} {key!r} exists with other details")
    if checked.errors:
        checked.writes.clear()
    else:
        for stream, event, *_ in wanted:
            claimed.setdefault(stream, (stream, event, row.row))
    return checked


def _envelope(stream: str, event: DomainEvent, clock: Clock, actor: str) -> NewEvent:
    # The id use_cases._record_once gives the same command: the API and the import agree.
    event_id = deterministic_id(event.event_type, stream, event.model_dump_json())
    return new_event(event, id=event_id, occurred_at=clock.now(), actor=actor)


async def import_customers(
    store: EventStore,
    clock: Clock,
    rows: Sequence[CustomerRow],
    actor: str,
    *,
    dry_run: bool = False,
) -> list[RowResult]:
    """Check every row, then record the valid ones (none in a dry run); one result per row."""
    ledger = _Ledger(store)
    claimed: dict[str, tuple[str, DomainEvent, int]] = {}
    checked = [await _check(row, ledger, claimed) for row in rows]
    if not dry_run:
        await _record(store, clock, [c for c in checked if c.writes], actor)
    return [
        RowResult(
            row=c.row.row,
            status="invalid" if c.errors else "created" if c.writes else "unchanged",
            customer_id=c.row.customer_id,
            errors=c.errors,
            warnings=c.warnings,
        )
        for c in checked
    ]


async def _record(store: EventStore, clock: Clock, rows: list[_Checked], actor: str) -> None:
    batches = [
        (stream, [_envelope(stream, event, clock, actor)], NO_STREAM)
        for c in rows
        for stream, event in c.writes
    ]
    if not batches:
        return
    try:
        await store.append_many(batches)
        return
    except (WrongExpectedVersion, EventIdConflict):
        pass  # someone wrote one of these streams meanwhile: find the row, keep the others
    for c in rows:
        try:
            await store.append_many(
                [
                    (stream, [_envelope(stream, event, clock, actor)], NO_STREAM)
                    for stream, event in c.writes
                ]
            )
        except (WrongExpectedVersion, EventIdConflict) as exc:
            c.errors.append(f"not recorded: written meanwhile by someone else ({exc})")
            c.writes.clear()
