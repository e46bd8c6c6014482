"""Use cases that change what is recorded already: subscription lifecycle, customer details,
plan versions and top-up products.

Each reads the entity's own stream, decides with the domain's rules, and appends at the version
it read. A command may name the `expected_version` it was based on (what GET showed): a change
recorded since is a Conflict (409), never silently overwritten. Event ids derive from the
stream, the version the command was based on and the event, so a retry of a command that was
recorded already finds its event at that place and is answered as the first time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from accounts.domain.commands import (
    ChangeCustomer,
    ChangePlan,
    ChangeUsername,
    DefineTopUpProduct,
    PlaceHold,
    PublishPlanVersion,
    PurchaseTopUp,
    ResumeSubscription,
    SuspendSubscription,
    TerminateSubscription,
)
from accounts.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidPlanVersion,
    NoTaxRule,
    NotFound,
    SubscriptionIsTerminated,
    UsernameTaken,
)
from accounts.domain.events import RadiusUsernameReserved
from accounts.domain.subscription import Subscription, first_of_month, first_of_next_month
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import (
    CustomerDetails,
    CustomerDetailsChanged,
    CustomerRegistered,
    PlanDefined,
    PlanTerms,
    PlanVersionPublished,
    RadiusUsernameAssigned,
    RadiusUsernameReleased,
    SubscriptionChange,
    TopUpProductDefined,
    TopUpPurchased,
    customer_stream,
    plan_stream,
    radius_user_stream,
    subscription_stream,
    subscription_topups_stream,
    topup_product_stream,
)
from ispbill_core.contracts.invoicing import tax_region_levels, tax_region_stream
from ispbill_core.events import DomainEvent, RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM, EventStore, WrongExpectedVersion
from ispbill_core.input_policy import radius_username_key


def today_in(clock: Clock, timezone: ZoneInfo) -> date:
    """Today in the ISP's time zone: the day "now" means for an effective date."""
    return clock.now().astimezone(timezone).date()


def _event_id(stream: str, base: int | None, event: DomainEvent) -> str:
    return str(deterministic_id(event.event_type, stream, str(base), event.model_dump_json()))


async def _append_after(
    store: EventStore,
    stream: str,
    base: int | None,
    event: DomainEvent,
    at: datetime,
    actor: str,
    what: str,
) -> None:
    """Append right after `base` (None: create the stream); anything else there is a Conflict
    unless it is this very event (a retry)."""
    event_id = deterministic_id(event.event_type, stream, str(base), event.model_dump_json())
    try:
        await store.append(
            stream,
            [new_event(event, id=event_id, occurred_at=at, actor=actor)],
            NO_STREAM if base is None else base,
        )
    except WrongExpectedVersion:
        raise Conflict(f"{what} was changed meanwhile; read it again and decide") from None


def _base(history: list[RecordedEvent], expected_version: int | None, what: str) -> int:
    """The version a command is based on: the one it names, else the current one."""
    current = history[-1].stream_position
    if expected_version is None:
        return current
    if expected_version > current:
        raise Conflict(f"{what} has no version {expected_version} (it is at {current})")
    return expected_version


def _recorded_already(
    history: list[RecordedEvent], base: int, stream: str, event: DomainEvent, what: str
) -> bool:
    """Whether the command's event is recorded right after `base` (a retry); a Conflict when
    something else is."""
    if base == history[-1].stream_position:
        return False
    if str(history[base + 1].id) == _event_id(stream, base, event):
        return True
    raise Conflict(
        f"{what} was changed since version {base} (it is at {history[-1].stream_position});"
        " read it again and decide"
    )


# --- subscriptions -------------------------------------------------------------------------


def _fold(history: list[RecordedEvent]) -> Subscription:
    return Subscription.fold([(r.stream_position, r.decode()) for r in history])


async def _subscription_history(store: EventStore, subscription_id: str) -> list[RecordedEvent]:
    history = await store.read_stream(subscription_stream(subscription_id))
    if not history:
        raise NotFound(f"subscription {subscription_id!r} does not exist")
    return history


async def load_subscription(store: EventStore, subscription_id: str) -> Subscription:
    return _fold(await _subscription_history(store, subscription_id))


async def _change_subscription(
    store: EventStore,
    clock: Clock,
    subscription_id: str,
    expected_version: int | None,
    decide: Callable[[Subscription], SubscriptionChange],
    actor: str,
) -> tuple[Subscription, SubscriptionChange, bool]:
    """Load -> decide -> append. Returns the subscription after the change, the change, and
    whether it was recorded now (False: a retry of one recorded already)."""
    stream = subscription_stream(subscription_id)
    what = f"subscription {subscription_id!r}"
    history = await _subscription_history(store, subscription_id)
    base = _base(history, expected_version, what)
    event = decide(_fold(history[: base + 1]))
    if _recorded_already(history, base, stream, event, what):
        return _fold(history), event, False
    await _append_after(store, stream, base, event, clock.now(), actor, what)
    sub = _fold(history)
    sub.apply(base + 1, event)
    return sub, event, True


async def _plan_currency(store: EventStore, plan_id: str) -> str:
    first = await store.read_stream(plan_stream(plan_id), limit=1)
    if not first:
        raise NotFound(f"plan {plan_id!r} does not exist")
    plan = first[0].decode()
    assert isinstance(plan, PlanDefined)
    return plan.monthly_fee.currency


async def change_plan(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    subscription_id: str,
    cmd: ChangePlan,
    actor: str,
) -> Subscription:
    """Upgrade or downgrade, from today, the next cycle (the first of next month) or a date."""
    today = today_in(clock, timezone)
    if cmd.effective == "now":
        effective_on = today
    elif cmd.effective == "next_cycle":
        effective_on = first_of_next_month(today)
    else:
        effective_on = cmd.effective
    currency = await _plan_currency(store, cmd.plan_id)

    current_currency: dict[str, str] = {}
    history = await _subscription_history(store, subscription_id)
    started_plan = _fold(history[:1]).started.plan_id
    current_currency[started_plan] = await _plan_currency(store, started_plan)

    def decide(sub: Subscription) -> SubscriptionChange:
        return sub.change_plan(
            cmd.plan_id,
            effective_on,
            today,
            currency=currency,
            current_currency=current_currency[started_plan],
            reason=cmd.reason,
        )

    sub, _, _ = await _change_subscription(
        store, clock, subscription_id, cmd.expected_version, decide, actor
    )
    return sub


async def suspend_subscription(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    subscription_id: str,
    cmd: SuspendSubscription,
    actor: str,
) -> Subscription:
    today = today_in(clock, timezone)
    day = cmd.effective_on or today
    sub, _, _ = await _change_subscription(
        store,
        clock,
        subscription_id,
        cmd.expected_version,
        lambda s: s.suspend(day, cmd.reason, today),
        actor,
    )
    return sub


async def resume_subscription(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    subscription_id: str,
    cmd: ResumeSubscription,
    actor: str,
) -> Subscription:
    today = today_in(clock, timezone)
    day = cmd.effective_on or today
    sub, _, _ = await _change_subscription(
        store,
        clock,
        subscription_id,
        cmd.expected_version,
        lambda s: s.resume(day, cmd.reason, today),
        actor,
    )
    return sub


async def place_hold(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    subscription_id: str,
    cmd: PlaceHold,
    actor: str,
) -> Subscription:
    today = today_in(clock, timezone)
    sub, _, _ = await _change_subscription(
        store,
        clock,
        subscription_id,
        cmd.expected_version,
        lambda s: s.hold(cmd.hold_from, cmd.hold_until, cmd.reason, today),
        actor,
    )
    return sub


async def terminate_subscription(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    subscription_id: str,
    cmd: TerminateSubscription,
    actor: str,
) -> Subscription:
    today = today_in(clock, timezone)
    sub, _, _ = await _change_subscription(
        store,
        clock,
        subscription_id,
        cmd.expected_version,
        lambda s: s.terminate(cmd.effective_on, cmd.reason, today),
        actor,
    )
    return sub


def radius_username_key_stream(username: str) -> str:
    """The stream that reserves a username's case-folded key: `Alice` and `alice` share it."""
    return f"radius-username-key-{radius_username_key(username)}"


def _legacy_spellings(username: str) -> list[str]:
    """Spellings of `username` that a claim from before case folding may have used (those
    claims have no key stream): itself and the usual ones, checked by reading their streams
    (before the key is reserved, so that a refused claim leaves no reservation behind)."""
    spellings = [
        username,
        username.lower(),
        username.upper(),
        username.capitalize(),
        username.title(),
    ]
    return list(dict.fromkeys(spellings))


def _held_by(history: list[RecordedEvent]) -> str | None:
    """The subscription a username (or username key) stream says holds it now, None when
    nobody does (never claimed, or released last)."""
    if not history:
        return None
    latest = history[-1].decode()
    if isinstance(latest, RadiusUsernameAssigned | RadiusUsernameReserved):
        return latest.subscription_id
    return None


async def claim_username(
    store: EventStore,
    clock: Clock,
    claim: RadiusUsernameAssigned,
    actor: str,
) -> None:
    """Make `claim.username` this subscription's, unique after case folding; UsernameTaken if
    another subscription holds it (or, before case folding existed, one of its usual
    spellings). Claiming a username this subscription holds already is a no-op (a retry).

    Two streams, each appended at the version read (NO_STREAM when new), which is what makes
    a username unique even when two clerks assign it at once: first the case-folded key
    (`radius-username-key-<casefold>`, RadiusUsernameReserved), then the exact spelling that
    rating reads (`radius-user-<username>`, RadiusUsernameAssigned). A released username (its
    streams end with RadiusUsernameReleased) is claimed again the same way."""
    taken = f"RADIUS username {claim.username!r} is taken"
    for spelling in _legacy_spellings(claim.username):
        holder = _held_by(await store.read_stream(radius_user_stream(spelling)))
        if holder is not None and holder != claim.subscription_id:
            shown = "" if spelling == claim.username else f" (as {spelling!r})"
            raise UsernameTaken(f"{taken}{shown}; usernames are unique regardless of case")
    key_stream = radius_username_key_stream(claim.username)
    key_history = await store.read_stream(key_stream)
    holder = _held_by(key_history)
    if holder is not None and holder != claim.subscription_id:
        raise UsernameTaken(f"{taken} (usernames are unique regardless of case)")
    if holder is None:
        reservation = RadiusUsernameReserved(
            key=radius_username_key(claim.username),
            username=claim.username,
            customer_id=claim.customer_id,
            subscription_id=claim.subscription_id,
        )
        base = key_history[-1].stream_position if key_history else None
        try:
            await _append_after(
                store, key_stream, base, reservation, clock.now(), actor, key_stream
            )
        except Conflict:
            raise UsernameTaken(f"{taken} (usernames are unique regardless of case)") from None
    stream = radius_user_stream(claim.username)
    history = await store.read_stream(stream)
    base = history[-1].stream_position if history else None
    if history:
        latest = history[-1].decode()
        if isinstance(latest, RadiusUsernameAssigned):
            if latest == claim:
                return
            raise UsernameTaken(taken)
    try:
        await _append_after(store, stream, base, claim, clock.now(), actor, stream)
    except Conflict:
        raise UsernameTaken(taken) from None


async def _release_username(
    store: EventStore, clock: Clock, released: RadiusUsernameReleased, actor: str
) -> None:
    """Free a username this subscription holds, its spelling and its case-folded key; a no-op
    for what it holds no more."""
    for stream in (
        radius_user_stream(released.username),
        radius_username_key_stream(released.username),
    ):
        history = await store.read_stream(stream)
        if _held_by(history) != released.subscription_id:
            continue
        await _append_after(
            store, stream, history[-1].stream_position, released, clock.now(), actor, stream
        )


async def change_username(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    subscription_id: str,
    cmd: ChangeUsername,
    actor: str,
) -> Subscription:
    """The subscription's usage arrives under another RADIUS username from today on. The new
    username is claimed first (as a start does), then the change recorded, then the old one
    released for reuse: a crash between the steps leaves at worst a claim no usage follows,
    and repeating the command completes it."""
    today = today_in(clock, timezone)
    history = await _subscription_history(store, subscription_id)
    base = _base(history, cmd.expected_version, f"subscription {subscription_id!r}")
    before = _fold(history[: base + 1])
    planned = before.change_username(cmd.radius_username, today)
    await claim_username(
        store,
        clock,
        RadiusUsernameAssigned(
            username=planned.new_username,
            customer_id=before.customer_id,
            subscription_id=subscription_id,
        ),
        actor,
    )
    sub, event, _ = await _change_subscription(
        store,
        clock,
        subscription_id,
        cmd.expected_version,
        lambda s: s.change_username(cmd.radius_username, today),
        actor,
    )
    assert event.__class__ is planned.__class__
    await _release_username(
        store,
        clock,
        RadiusUsernameReleased(
            username=planned.old_username,
            subscription_id=subscription_id,
            released_on=planned.effective_on,
        ),
        actor,
    )
    return sub


# --- customers -----------------------------------------------------------------------------


async def load_customer(store: EventStore, customer_id: str) -> tuple[int, CustomerDetails]:
    """The customer's current details (its latest registration or change) and version."""
    history = await store.read_stream(customer_stream(customer_id))
    if not history:
        raise NotFound(f"customer {customer_id!r} does not exist")
    latest = history[-1].decode()
    assert isinstance(latest, CustomerRegistered | CustomerDetailsChanged)
    return history[-1].stream_position, latest


async def change_customer(
    store: EventStore, clock: Clock, customer_id: str, cmd: ChangeCustomer, actor: str
) -> tuple[int, CustomerDetails]:
    """New contact details, addresses, region, account type or tags: one event carrying all
    the customer's details. A change to what is recorded already records nothing."""
    stream = customer_stream(customer_id)
    what = f"customer {customer_id!r}"
    history = await store.read_stream(stream)
    if not history:
        raise NotFound(f"{what} does not exist")
    base = _base(history, cmd.expected_version, what)
    current = history[base].decode()
    assert isinstance(current, CustomerRegistered | CustomerDetailsChanged)
    changed = cmd.applied_to(current)
    if changed.tax_region != current.tax_region and not await region_has_tax_rules(
        store, changed.tax_region
    ):
        raise NoTaxRule(
            f"tax region {changed.tax_region!r} has no tax rule: set its rate first"
            ' (POST /api/v1/tax-rates; rate "0" with tax_name "untaxed" for no tax)'
        )
    if _recorded_already(history, base, stream, changed, what):
        return history[-1].stream_position, changed
    if changed.model_dump() == current.model_dump():
        return base, current
    await _append_after(store, stream, base, changed, clock.now(), actor, what)
    return base + 1, changed


# --- catalog -------------------------------------------------------------------------------


async def plan_versions(store: EventStore, plan_id: str) -> list[PlanTerms]:
    """Every version of a plan in order: PlanDefined (version 1), then PlanVersionPublished."""
    history = await store.read_stream(plan_stream(plan_id))
    if not history:
        raise NotFound(f"plan {plan_id!r} does not exist")
    versions: list[PlanTerms] = []
    for recorded in history:
        event = recorded.decode()
        assert isinstance(event, PlanDefined | PlanVersionPublished)
        versions.append(event)
    return versions


async def publish_plan_version(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    plan_id: str,
    cmd: PublishPlanVersion,
    actor: str,
) -> PlanVersionPublished:
    """A plan's next version, in force from its effective date. Refused: another currency
    (subscriptions of one customer share an invoice), a date not after the latest version's,
    or in an earlier billing period than today's (it may be invoiced already)."""
    versions = await plan_versions(store, plan_id)
    latest = versions[-1]
    event = cmd.to_event(plan_id, len(versions) + 1)
    if isinstance(latest, PlanVersionPublished) and latest.model_dump(
        exclude={"version"}
    ) == event.model_dump(exclude={"version"}):
        return latest  # a retry
    if event.monthly_fee.currency != versions[0].monthly_fee.currency:
        raise InvalidPlanVersion(
            f"plan {plan_id!r} bills in {versions[0].monthly_fee.currency}; a version cannot"
            " change its currency"
        )
    if isinstance(latest, PlanVersionPublished) and event.effective_from <= latest.effective_from:
        raise InvalidPlanVersion(
            f"version {latest.version} is in force from {latest.effective_from}; the next one"
            " starts after it"
        )
    today = today_in(clock, timezone)
    if event.effective_from < first_of_month(today):
        raise InvalidPlanVersion(
            f"effective {event.effective_from}, before this billing period"
            f" (from {first_of_month(today)}): an earlier period may be invoiced already"
        )
    await _append_after(
        store,
        plan_stream(plan_id),
        len(versions) - 1,
        event,
        clock.now(),
        actor,
        f"plan {plan_id!r}",
    )
    return event


async def define_topup_product(
    store: EventStore, clock: Clock, cmd: DefineTopUpProduct, actor: str
) -> TopUpProductDefined:
    """Defining the same product twice is a no-op; the same id with other details is refused."""
    event = cmd.to_event()
    stream = topup_product_stream(event.product_id)
    existing = await store.read_stream(stream, limit=1)
    if existing:
        if existing[0].decode() != event:
            raise AlreadyExists(f"top-up product {event.product_id!r} exists with other details")
        return event
    await _append_after(store, stream, None, event, clock.now(), actor, stream)
    return event


async def purchase_topup(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo,
    subscription_id: str,
    cmd: PurchaseTopUp,
    actor: str,
) -> TopUpPurchased:
    """A top-up bought now: its data is usable from now for the product's validity days.
    The same `purchase_id` again returns the purchase recorded (another product under the
    same id is refused). A terminated subscription buys nothing."""
    subscription = await load_subscription(store, subscription_id)
    products = await store.read_stream(topup_product_stream(cmd.product_id), limit=1)
    if not products:
        raise NotFound(f"top-up product {cmd.product_id!r} does not exist")
    product = products[0].decode()
    assert isinstance(product, TopUpProductDefined)
    stream = subscription_topups_stream(subscription_id)
    for _ in range(20):
        history = await store.read_stream(stream)
        for recorded in history:
            bought = recorded.decode()
            assert isinstance(bought, TopUpPurchased)
            if bought.purchase_id == cmd.purchase_id:
                if bought.product_id != cmd.product_id:
                    raise AlreadyExists(
                        f"purchase {cmd.purchase_id!r} was of top-up {bought.product_id!r}"
                    )
                return bought
        now = clock.now()
        terminated_on = subscription.terminated_on
        if terminated_on is not None and today_in(clock, timezone) > terminated_on:
            raise SubscriptionIsTerminated(
                f"subscription {subscription_id!r} ended on {terminated_on}"
            )
        event = TopUpPurchased(
            purchase_id=cmd.purchase_id,
            subscription_id=subscription_id,
            customer_id=subscription.started.customer_id,
            product_id=product.product_id,
            price=product.price,
            bytes=product.bytes,
            valid_from=now,
            valid_until=now + timedelta(days=product.validity_days),
        )
        try:
            await store.append(
                stream,
                [
                    new_event(
                        event,
                        id=deterministic_id("topup-purchased", subscription_id, cmd.purchase_id),
                        occurred_at=now,
                        actor=actor,
                    )
                ],
                history[-1].stream_position if history else NO_STREAM,
            )
        except WrongExpectedVersion:
            continue  # another purchase (or this one, sent twice at once) came first
        return event
    raise Conflict(f"the top-ups of subscription {subscription_id!r} kept changing")


async def purchased_topups(store: EventStore, subscription_id: str) -> list[TopUpPurchased]:
    await load_subscription(store, subscription_id)  # NotFound
    bought = [
        r.decode() for r in await store.read_stream(subscription_topups_stream(subscription_id))
    ]
    return [b for b in bought if isinstance(b, TopUpPurchased)]


async def region_has_tax_rules(store: EventStore, region: str) -> bool:
    """Whether the region or a level above it ("BD" for "BD.dhaka") has had a tax rule:
    read from the levels' own streams, which invoicing writes. Whether one is in force on a
    given day is the bill run's question (it reports a customer without one)."""
    for level in tax_region_levels(region):
        if await store.stream_version(tax_region_stream(level)) is not None:
            return True
    return False
