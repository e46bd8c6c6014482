"""Accounts use cases: validate, then record the fact in its own stream, idempotently."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from accounts.application.lifecycle import (  # noqa: F401 - re-exported
    claim_username,
    radius_username_key_stream,
    region_has_tax_rules,
)
from accounts.domain.commands import (
    ChangeNas,
    DefinePlan,
    RegisterCustomer,
    RegisterNas,
    StartSubscription,
    nas_address,
)
from accounts.domain.errors import (
    AddressInUse,
    AlreadyExists,
    Conflict,
    NoTaxRule,
    NotFound,
)
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import (
    AnyNasRegistered,
    CustomerRegistered,
    NasRegistered,
    NasRegisteredV1,
    NasRemoved,
    PlanDefined,
    RadiusUsernameAssigned,
    SubscriptionStarted,
    customer_stream,
    nas_stream,
    plan_stream,
    subscription_stream,
)
from ispbill_core.events import DomainEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM, EventStore, WrongExpectedVersion
from ispbill_core.eventstore.queries import recorded_of_types
from ispbill_core.sealing import Keyring

log = logging.getLogger(__name__)


async def _record_once(
    store: EventStore, stream: str, event: DomainEvent, clock: Clock, actor: str
) -> None:
    """Create `stream` with `event`. Repeating the same command is a no-op (same id, same
    content); the same id with other details is refused."""
    event_id = deterministic_id(event.event_type, stream, event.model_dump_json())
    try:
        await store.append(
            stream, [new_event(event, id=event_id, occurred_at=clock.now(), actor=actor)], NO_STREAM
        )
    except WrongExpectedVersion:
        raise AlreadyExists(f"{stream} already exists with other details") from None


async def define_plan(store: EventStore, clock: Clock, cmd: DefinePlan, actor: str) -> PlanDefined:
    event = cmd.to_event()
    await _record_once(store, plan_stream(event.plan_id), event, clock, actor)
    return event


async def register_customer(
    store: EventStore, clock: Clock, cmd: RegisterCustomer, actor: str
) -> CustomerRegistered:
    event = cmd.to_event()
    await require_tax_rule(store, event.tax_region)
    await _record_once(store, customer_stream(event.customer_id), event, clock, actor)
    return event


async def require_tax_rule(store: EventStore, region: str) -> None:
    """A customer's region must have a tax rule, or the explicit "untaxed" one (a rate of 0),
    set on it or on a level above it (POST /api/v1/tax-rules or /tax-rates)."""
    if not await region_has_tax_rules(store, region):
        raise NoTaxRule(
            f"tax region {region!r} has no tax rule: set its rate first (POST /api/v1/tax-rates;"
            ' rate "0" with tax_name "untaxed" for a region that pays no tax)'
        )


@dataclass(frozen=True)
class NasInService:
    current: AnyNasRegistered
    #: position of the NAS stream's latest event (ChangeNas.expected_version)
    version: int
    #: secrets in plain text anywhere in the ledger (registrations from before sealing, of any
    #: NAS: one secret is often shared by a fleet of routers)
    plaintext_secrets: frozenset[bytes] = frozenset()


async def nases_in_service(store: EventStore) -> dict[str, NasInService]:
    """Every NAS in service with its latest registration, in the order registered (a NAS
    removed and registered again counts from its new registration). An event that does not
    decode is logged and skipped, as the collector's registry does."""
    found: dict[str, tuple[AnyNasRegistered, int]] = {}
    plaintext: set[bytes] = set()
    for recorded in await recorded_of_types(store, NasRegistered.event_type, NasRemoved.event_type):
        try:
            event = recorded.decode()
        except Exception:
            log.exception("NAS registry event %s does not decode; skipped", recorded.id)
            continue
        if isinstance(event, NasRemoved):
            found.pop(event.nas_id, None)
            continue
        assert isinstance(event, NasRegistered | NasRegisteredV1)
        if isinstance(event, NasRegisteredV1):
            plaintext.add(event.secret.encode("utf-8"))
        found[event.nas_id] = (event, recorded.stream_position)
    exposed = frozenset(plaintext)
    return {
        nas_id: NasInService(event, version, exposed) for nas_id, (event, version) in found.items()
    }


async def _nas_history(
    store: EventStore, nas_id: str
) -> tuple[int | None, AnyNasRegistered | NasRemoved | None]:
    """The NAS stream's version and its latest event; (None, None) when never registered."""
    history = await store.read_stream(nas_stream(nas_id))
    if not history:
        return None, None
    latest = history[-1].decode()
    assert isinstance(latest, NasRegistered | NasRegisteredV1 | NasRemoved)
    return history[-1].stream_position, latest


async def _append_nas_event(
    store: EventStore,
    clock: Clock,
    nas_id: str,
    event: NasRegistered | NasRemoved,
    version: int,
    actor: str,
) -> None:
    """After `version`, which this command read: Conflict when someone else appended since."""
    stream = nas_stream(nas_id)
    event_id = deterministic_id(event.event_type, stream, str(version), event.model_dump_json())
    try:
        await store.append(
            stream, [new_event(event, id=event_id, occurred_at=clock.now(), actor=actor)], version
        )
    except WrongExpectedVersion:
        raise Conflict(f"NAS {nas_id!r} was changed meanwhile; read it and try again") from None


async def register_nas(
    store: EventStore, clock: Clock, cmd: RegisterNas, actor: str, *, keyring: Keyring
) -> AnyNasRegistered:
    """A NAS registered already is judged by its current details: the same (its secret opened,
    whichever key sealed it, or none for a NAS registered before sealing) is a no-op returning
    them; anything else, the first registration of a NAS changed since included, is refused
    (change a NAS with `change_nas`). Sealing is deterministic, so the first attempt and its
    retries record one event. A removed NAS is registered again."""
    version, current = await _nas_history(store, cmd.nas_id)
    if current is not None and not isinstance(current, NasRemoved):
        if cmd.describes(current, keyring):
            return current
        raise AlreadyExists(
            f"NAS {cmd.nas_id!r} is registered with other details; change it with PUT"
        )
    event = cmd.to_event(keyring)
    await _refuse_an_address_in_use(store, event.nas_id, event.ip_address)
    if version is None:
        await _record_once(store, nas_stream(cmd.nas_id), event, clock, actor)
    else:
        await _append_nas_event(store, clock, cmd.nas_id, event, version, actor)
    return event


async def _refuse_an_address_in_use(store: EventStore, nas_id: str, address: str) -> None:
    """The collector knows a NAS by its source address: a second NAS at an address would take
    the first one's accounting (and, with another secret, have its packets dropped). Checked
    against every NAS's current address; two clerks registering one address at the same
    instant are not caught (NAS registrations are rare; the collector then keeps the later)."""
    for nas in (await nases_in_service(store)).values():
        other = nas.current
        if other.nas_id != nas_id and nas_address(other.ip_address) == address:
            raise AddressInUse(f"{address} is the address of NAS {other.nas_id!r} already")


async def change_nas(
    store: EventStore,
    clock: Clock,
    nas_id: str,
    cmd: ChangeNas,
    actor: str,
    *,
    keyring: Keyring,
) -> NasRegistered:
    """New details for a registered NAS, appended to its stream: the collector's registry
    replaces the NAS's address, secret and flag with them. Details equal to the current ones
    record nothing (a retry). A NAS registered before secrets were sealed is sealed this way."""
    version, current = await _nas_history(store, nas_id)
    if version is None or isinstance(current, NasRemoved):
        raise NotFound(f"NAS {nas_id!r} is not registered")
    if cmd.expected_version is not None and cmd.expected_version != version:
        raise Conflict(
            f"NAS {nas_id!r} was changed since version {cmd.expected_version} (it is at"
            f" {version}); read it again and decide"
        )
    event = cmd.for_nas(nas_id).to_event(keyring)
    await _refuse_an_address_in_use(store, nas_id, event.ip_address)
    if current != event:
        await _append_nas_event(store, clock, nas_id, event, version, actor)
    return event


async def remove_nas(
    store: EventStore, clock: Clock, nas_id: str, reason: str, actor: str
) -> NasRemoved:
    """Take a NAS out of service: the collector refuses its accounting from then on. Removing
    a removed NAS records nothing."""
    version, current = await _nas_history(store, nas_id)
    if version is None:
        raise NotFound(f"NAS {nas_id!r} is not registered")
    if isinstance(current, NasRemoved):
        return current
    removal = NasRemoved(nas_id=nas_id, reason=reason)
    await _append_nas_event(store, clock, nas_id, removal, version, actor)
    return removal


async def start_subscription(
    store: EventStore, clock: Clock, cmd: StartSubscription, actor: str
) -> SubscriptionStarted:
    event = cmd.to_event()
    if await store.stream_version(customer_stream(event.customer_id)) is None:
        raise NotFound(f"customer {event.customer_id!r} does not exist")
    if await store.stream_version(plan_stream(event.plan_id)) is None:
        raise NotFound(f"plan {event.plan_id!r} does not exist")
    # Refuse a different subscription under an existing id before claiming its username, or
    # the refused command would leave the new username pointing at the existing subscription.
    existing = await store.read_stream(subscription_stream(event.subscription_id), limit=1)
    if existing:
        if existing[0].decode() != event:
            raise AlreadyExists(f"subscription {event.subscription_id!r} exists with other details")
        return event
    # The username stream is claimed first: its append at the version read (NO_STREAM for a
    # new username) is what makes usernames unique, even when two clerks assign the same one
    # at the same moment; a username released by another subscription is claimed again.
    claim = RadiusUsernameAssigned(
        username=event.radius_username,
        customer_id=event.customer_id,
        subscription_id=event.subscription_id,
    )
    await claim_username(store, clock, claim, actor)
    await _record_once(store, subscription_stream(event.subscription_id), event, clock, actor)
    return event
