"""REST endpoints of the accounts service, under /api/v1."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, status
from pydantic import AfterValidator

from accounts.application import lifecycle, use_cases
from accounts.application.read_models import AccountsQueries, secret_digest
from accounts.domain.commands import (
    ChangeCustomer,
    ChangeNas,
    ChangePlan,
    ChangeUsername,
    DefinePlan,
    DefineTopUpProduct,
    PlaceHold,
    PublishPlanVersion,
    PurchaseTopUp,
    RegisterCustomer,
    RegisterNas,
    ResumeSubscription,
    StartSubscription,
    SuspendSubscription,
    TerminateSubscription,
)
from accounts.domain.subscription import Subscription
from ispbill_core.access import (
    CUSTOMERS_READ,
    CUSTOMERS_WRITE,
    NAS_READ,
    NAS_WRITE,
    PLANS_READ,
    PLANS_WRITE,
    SUBSCRIPTIONS_READ,
    SUBSCRIPTIONS_WRITE,
    Principal,
)
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import (
    AnyNasRegistered,
    CustomerDetails,
    CustomerRegistered,
    NasRegistered,
    NasRegisteredV1,
    PlanDefined,
    PlanTerms,
    PlanVersionPublished,
    SubscriptionStarted,
    TopUpProductDefined,
    TopUpPurchased,
    nas_secret_context,
)
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import MAX_CURSOR, TEXT_PATTERN, one_line_text
from ispbill_core.sealing import Keyring, SealingError, sealed_with
from ispbill_core.web import requires

#: How the ledger holds a NAS's secret (`secret_storage`); none of them is a secret.
SEALED, PLAINTEXT, EXPOSED = "sealed", "plaintext", "exposed"


def nas_view(
    event: AnyNasRegistered, keyring: Keyring, earlier_plaintext: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A NAS as the API shows it: never its secret, sealed or not.

    `secret_storage` is "sealed"; "plaintext" for a NAS registered before secrets were sealed;
    "exposed" when it is sealed now but the same secret is in plain text in a registration from
    before sealing, of this NAS or another (`earlier_plaintext`: their `secret_digest`s): change
    the secret on the NAS and here. `secret_key_id`
    is the key that sealed it (not secret; what key rotation needs to know). The API adds
    `version`, to send back as a change's `expected_version`.
    """
    view = event.model_dump(mode="json", exclude={"secret", "secret_sealed"})
    if isinstance(event, NasRegisteredV1):
        return {**view, "secret_storage": PLAINTEXT, "secret_key_id": None}
    storage = SEALED
    if earlier_plaintext:
        try:
            secret = keyring.open(event.secret_sealed, nas_secret_context(event.nas_id))
        except SealingError:
            secret = None
        if secret is not None and secret_digest(secret) in earlier_plaintext:
            storage = EXPOSED
    return {**view, "secret_storage": storage, "secret_key_id": sealed_with(event.secret_sealed)}


def subscription_view(sub: Subscription, today: Any) -> dict[str, Any]:
    """A subscription as GET shows it: status and plan today, the version to send back as a
    change's `expected_version`, and its history with effective dates."""
    return {
        "subscription_id": sub.subscription_id,
        "customer_id": sub.customer_id,
        "plan_id": sub.plan_on(today),
        "scheduled_plan_id": sub.latest_plan if sub.latest_plan != sub.plan_on(today) else None,
        "radius_username": sub.radius_username,
        "started_on": sub.started.started_on.isoformat(),
        "usage_source": sub.started.usage_source,
        "status": sub.status_on(today),
        "terminated_on": sub.terminated_on.isoformat() if sub.terminated_on else None,
        "version": sub.version,
        "history": [
            {
                "version": entry.version,
                "type": entry.type,
                "effective_on": entry.effective_on.isoformat(),
                **entry.details,
            }
            for entry in sub.history
        ],
    }


def customer_view(version: int, details: CustomerDetails) -> dict[str, Any]:
    return {**details.model_dump(mode="json"), "version": version}


def plan_view(versions: list[PlanTerms]) -> dict[str, Any]:
    """A plan with every version; version 1 (PlanDefined) is in force from the beginning."""
    return {
        "plan_id": versions[0].plan_id,
        "versions": [
            {
                **v.model_dump(mode="json", exclude={"version", "effective_from"}),
                "version": v.version if isinstance(v, PlanVersionPublished) else 1,
                "effective_from": (
                    v.effective_from.isoformat() if isinstance(v, PlanVersionPublished) else None
                ),
            }
            for v in versions
        ],
    }


def accounts_router(
    store: EventStore,
    clock: Clock,
    keyring: Keyring,
    queries: AccountsQueries,
    *,
    timezone: ZoneInfo | None = None,
) -> APIRouter:
    """`timezone` is the ISP's: it says which day "today" is for effective dates."""
    router = APIRouter(prefix="/api/v1", tags=["accounts"])
    tz = timezone or ZoneInfo("UTC")

    def today() -> Any:
        return lifecycle.today_in(clock, tz)

    @router.post("/plans", status_code=status.HTTP_201_CREATED)
    async def define_plan(cmd: DefinePlan, who: Principal = requires(PLANS_WRITE)) -> PlanDefined:
        return await use_cases.define_plan(store, clock, cmd, who.actor)

    @router.get("/plans", dependencies=[requires(PLANS_READ)])
    async def list_plans() -> list[PlanDefined]:
        return [PlanDefined.model_validate(p) for p in await queries.plans()]

    @router.post("/customers", status_code=status.HTTP_201_CREATED)
    async def register_customer(
        cmd: RegisterCustomer, who: Principal = requires(CUSTOMERS_WRITE)
    ) -> CustomerRegistered:
        return await use_cases.register_customer(store, clock, cmd, who.actor)

    @router.get("/customers", dependencies=[requires(CUSTOMERS_READ)])
    async def list_customers(
        q: str | None = Query(
            default=None, max_length=100, description="part of the id, name or e-mail"
        ),
        region: str | None = Query(default=None, max_length=64),
        account_type: str | None = Query(default=None, pattern=r"^(home|business|corporate)$"),
        tag: str | None = Query(default=None, max_length=40),
        limit: int = Query(default=1000, ge=1, le=10_000),
        after: str | None = Query(
            default=None, max_length=64, description="the last customer_id of the page before"
        ),
    ) -> list[CustomerRegistered]:
        """Customers ordered by id, a page at a time (`after` the last id of the page before);
        `q` finds a part of the id, name or e-mail, case-insensitively."""
        found = await queries.customers(
            search=q, region=region, account_type=account_type, tag=tag, limit=limit, after=after
        )
        return [
            CustomerRegistered.model_validate({k: v for k, v in c.items() if k != "version"})
            for c in found
        ]

    @router.post("/subscriptions", status_code=status.HTTP_201_CREATED)
    async def start_subscription(
        cmd: StartSubscription, who: Principal = requires(SUBSCRIPTIONS_WRITE)
    ) -> SubscriptionStarted:
        return await use_cases.start_subscription(store, clock, cmd, who.actor)

    @router.get("/subscriptions", dependencies=[requires(SUBSCRIPTIONS_READ)])
    async def list_subscriptions(
        customer_id: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=1000, ge=1, le=10_000),
        after: int = Query(
            default=0,
            ge=0,
            le=MAX_CURSOR,
            description="the `cursor` of the last one of the page before",
        ),
    ) -> list[dict[str, Any]]:
        """Subscriptions in the order started, all or one customer's, each with its plan,
        RADIUS username and status today (pending, active, suspended, on_hold, terminated)."""
        return await queries.subscriptions(
            today(), customer_id=customer_id, limit=limit, after=after
        )

    @router.get("/customers/{customer_id}", dependencies=[requires(CUSTOMERS_READ)])
    async def get_customer(customer_id: str) -> dict[str, Any]:
        """A customer's current details and `version` (send it back as `expected_version`)."""
        return customer_view(*await lifecycle.load_customer(store, customer_id))

    @router.patch("/customers/{customer_id}")
    async def change_customer(
        customer_id: str, cmd: ChangeCustomer, who: Principal = requires(CUSTOMERS_WRITE)
    ) -> dict[str, Any]:
        """Change some of a customer's details; the ones not given stay. 409 when the customer
        changed since `expected_version`."""
        return customer_view(
            *await lifecycle.change_customer(store, clock, customer_id, cmd, who.actor)
        )

    @router.get("/subscriptions/{subscription_id}", dependencies=[requires(SUBSCRIPTIONS_READ)])
    async def get_subscription(subscription_id: str) -> dict[str, Any]:
        """Status and plan today, `version`, and the history with effective dates."""
        sub = await lifecycle.load_subscription(store, subscription_id)
        return subscription_view(sub, today())

    @router.post("/subscriptions/{subscription_id}/plan-change")
    async def change_plan(
        subscription_id: str, cmd: ChangePlan, who: Principal = requires(SUBSCRIPTIONS_WRITE)
    ) -> dict[str, Any]:
        """Upgrade or downgrade: "now" (today), "next_cycle" (the first of next month) or a
        date. Days before it are charged on the old plan, from it on the new one."""
        sub = await lifecycle.change_plan(store, clock, tz, subscription_id, cmd, who.actor)
        return subscription_view(sub, today())

    @router.post("/subscriptions/{subscription_id}/suspend")
    async def suspend(
        subscription_id: str,
        cmd: SuspendSubscription,
        who: Principal = requires(SUBSCRIPTIONS_WRITE),
    ) -> dict[str, Any]:
        """Suspend by staff from `effective_on` (default today); suspended days are not
        charged."""
        sub = await lifecycle.suspend_subscription(
            store, clock, tz, subscription_id, cmd, who.actor
        )
        return subscription_view(sub, today())

    @router.post("/subscriptions/{subscription_id}/resume")
    async def resume(
        subscription_id: str,
        cmd: ResumeSubscription,
        who: Principal = requires(SUBSCRIPTIONS_WRITE),
    ) -> dict[str, Any]:
        """Resume a suspended subscription from `effective_on` (default today), charged."""
        sub = await lifecycle.resume_subscription(store, clock, tz, subscription_id, cmd, who.actor)
        return subscription_view(sub, today())

    @router.post("/subscriptions/{subscription_id}/hold")
    async def hold(
        subscription_id: str, cmd: PlaceHold, who: Principal = requires(SUBSCRIPTIONS_WRITE)
    ) -> dict[str, Any]:
        """A vacation hold from `from` to `until` (both inclusive, not charged)."""
        sub = await lifecycle.place_hold(store, clock, tz, subscription_id, cmd, who.actor)
        return subscription_view(sub, today())

    @router.post("/subscriptions/{subscription_id}/terminate")
    async def terminate(
        subscription_id: str,
        cmd: TerminateSubscription,
        who: Principal = requires(SUBSCRIPTIONS_WRITE),
    ) -> dict[str, Any]:
        """End the subscription: `effective_on` is its last day of service, charged."""
        sub = await lifecycle.terminate_subscription(
            store, clock, tz, subscription_id, cmd, who.actor
        )
        return subscription_view(sub, today())

    @router.post("/subscriptions/{subscription_id}/username")
    async def change_username(
        subscription_id: str, cmd: ChangeUsername, who: Principal = requires(SUBSCRIPTIONS_WRITE)
    ) -> dict[str, Any]:
        """Usage arrives under a new RADIUS username from today; the old one is released."""
        sub = await lifecycle.change_username(store, clock, tz, subscription_id, cmd, who.actor)
        return subscription_view(sub, today())

    @router.get("/plans/{plan_id}", dependencies=[requires(PLANS_READ)])
    async def get_plan(plan_id: str) -> dict[str, Any]:
        """A plan and every version of it, each with the date it is in force from."""
        return plan_view(await lifecycle.plan_versions(store, plan_id))

    @router.post("/plans/{plan_id}/versions", status_code=status.HTTP_201_CREATED)
    async def publish_plan_version(
        plan_id: str, cmd: PublishPlanVersion, who: Principal = requires(PLANS_WRITE)
    ) -> dict[str, Any]:
        """The plan's next version, in force from `effective_from`."""
        await lifecycle.publish_plan_version(store, clock, tz, plan_id, cmd, who.actor)
        return plan_view(await lifecycle.plan_versions(store, plan_id))

    @router.post("/topups", status_code=status.HTTP_201_CREATED)
    async def define_topup(
        cmd: DefineTopUpProduct, who: Principal = requires(PLANS_WRITE)
    ) -> TopUpProductDefined:
        return await lifecycle.define_topup_product(store, clock, cmd, who.actor)

    @router.get("/topups", dependencies=[requires(PLANS_READ)])
    async def list_topups() -> list[TopUpProductDefined]:
        return [TopUpProductDefined.model_validate(t) for t in await queries.topups()]

    @router.post("/subscriptions/{subscription_id}/topups", status_code=status.HTTP_201_CREATED)
    async def purchase_topup(
        subscription_id: str, cmd: PurchaseTopUp, who: Principal = requires(SUBSCRIPTIONS_WRITE)
    ) -> TopUpPurchased:
        """A data top-up bought now, valid for the product's days. Send the same `purchase_id`
        again and the purchase already recorded comes back: it is recorded, and charged, once."""
        return await lifecycle.purchase_topup(store, clock, tz, subscription_id, cmd, who.actor)

    @router.get(
        "/subscriptions/{subscription_id}/topups", dependencies=[requires(SUBSCRIPTIONS_READ)]
    )
    async def list_purchased_topups(subscription_id: str) -> list[TopUpPurchased]:
        """The top-ups bought for the subscription, oldest first."""
        return await lifecycle.purchased_topups(store, subscription_id)

    async def nas_views() -> dict[str, dict[str, Any]]:
        """Every NAS in service with its current details, in the order registered."""
        digests = await queries.plaintext_digests()
        views: dict[str, dict[str, Any]] = {}
        for data, version, event_version in await queries.nases():
            if event_version == 1:
                view = {**data, "secret_storage": PLAINTEXT, "secret_key_id": None}
            else:
                view = nas_view(NasRegistered.model_validate(data), keyring, digests)
            views[data["nas_id"]] = {**view, "version": version}
        return views

    async def view_of(registered: AnyNasRegistered) -> dict[str, Any]:
        """The view GET gives of this NAS; from the event alone when it was removed since."""
        views = await nas_views()
        return views.get(registered.nas_id) or nas_view(registered, keyring)

    @router.post("/nas", status_code=status.HTTP_201_CREATED)
    async def register_nas(
        cmd: RegisterNas, who: Principal = requires(NAS_WRITE)
    ) -> dict[str, Any]:
        """Register a NAS. Its secret is sealed before it is recorded and is never shown."""
        registered = await use_cases.register_nas(store, clock, cmd, who.actor, keyring=keyring)
        return await view_of(registered)

    @router.put("/nas/{nas_id}")
    async def change_nas(
        nas_id: str, cmd: ChangeNas, who: Principal = requires(NAS_WRITE)
    ) -> dict[str, Any]:
        """New details for a registered NAS: address, secret, flags (all of them)."""
        changed = await use_cases.change_nas(store, clock, nas_id, cmd, who.actor, keyring=keyring)
        return await view_of(changed)

    @router.delete("/nas/{nas_id}")
    async def remove_nas(
        nas_id: str,
        reason: Annotated[
            str,
            Query(max_length=200, json_schema_extra={"pattern": TEXT_PATTERN}),
            AfterValidator(one_line_text),
        ] = "",
        who: Principal = requires(NAS_WRITE),
    ) -> dict[str, Any]:
        """Take a NAS out of service: its accounting is refused from then on, its address is
        free for another NAS; POST registers it again. Removing it twice changes nothing."""
        removal = await use_cases.remove_nas(store, clock, nas_id, reason, who.actor)
        return removal.model_dump(mode="json")

    @router.get("/nas", dependencies=[requires(NAS_READ)])
    async def list_nas() -> list[dict[str, Any]]:
        """Every registered NAS with its current details, in the order registered."""
        return list((await nas_views()).values())

    return router
