"""REST endpoints of the accounts service, under /api/v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status

from accounts.application import use_cases
from accounts.application.read_models import AccountsQueries, secret_digest
from accounts.domain.commands import (
    ChangeNas,
    DefinePlan,
    RegisterCustomer,
    RegisterNas,
    StartSubscription,
)
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import (
    AnyNasRegistered,
    CustomerRegistered,
    NasRegistered,
    NasRegisteredV1,
    PlanDefined,
    SubscriptionStarted,
    nas_secret_context,
)
from ispbill_core.eventstore import EventStore
from ispbill_core.sealing import Keyring, SealingError, sealed_with

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


def accounts_router(
    store: EventStore, clock: Clock, keyring: Keyring, queries: AccountsQueries
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["accounts"])
    actor = "api"

    @router.post("/plans", status_code=status.HTTP_201_CREATED)
    async def define_plan(cmd: DefinePlan) -> PlanDefined:
        return await use_cases.define_plan(store, clock, cmd, actor)

    @router.get("/plans")
    async def list_plans() -> list[PlanDefined]:
        return [PlanDefined.model_validate(p) for p in await queries.plans()]

    @router.post("/customers", status_code=status.HTTP_201_CREATED)
    async def register_customer(cmd: RegisterCustomer) -> CustomerRegistered:
        return await use_cases.register_customer(store, clock, cmd, actor)

    @router.get("/customers")
    async def list_customers(
        q: str | None = Query(
            default=None, max_length=100, description="part of the id, name or e-mail"
        ),
        region: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=1000, ge=1, le=10_000),
        after: str | None = Query(
            default=None, max_length=64, description="the last customer_id of the page before"
        ),
    ) -> list[CustomerRegistered]:
        """Customers ordered by id, a page at a time (`after` the last id of the page before);
        `q` finds a part of the id, name or e-mail, case-insensitively."""
        found = await queries.customers(search=q, region=region, limit=limit, after=after)
        return [
            CustomerRegistered.model_validate({k: v for k, v in c.items() if k != "version"})
            for c in found
        ]

    @router.post("/subscriptions", status_code=status.HTTP_201_CREATED)
    async def start_subscription(cmd: StartSubscription) -> SubscriptionStarted:
        return await use_cases.start_subscription(store, clock, cmd, actor)

    @router.get("/subscriptions")
    async def list_subscriptions(
        customer_id: str | None = Query(default=None, max_length=64),
    ) -> list[SubscriptionStarted]:
        """Subscriptions in the order started, all or one customer's."""
        found = await queries.subscriptions(customer_id=customer_id, limit=100_000)
        return [SubscriptionStarted.model_validate(s) for s in found]

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
    async def register_nas(cmd: RegisterNas) -> dict[str, Any]:
        """Register a NAS. Its secret is sealed before it is recorded and is never shown."""
        registered = await use_cases.register_nas(store, clock, cmd, actor, keyring=keyring)
        return await view_of(registered)

    @router.put("/nas/{nas_id}")
    async def change_nas(nas_id: str, cmd: ChangeNas) -> dict[str, Any]:
        """New details for a registered NAS: address, secret, flags (all of them)."""
        changed = await use_cases.change_nas(store, clock, nas_id, cmd, actor, keyring=keyring)
        return await view_of(changed)

    @router.delete("/nas/{nas_id}")
    async def remove_nas(
        nas_id: str, reason: str = Query(default="", max_length=200)
    ) -> dict[str, Any]:
        """Take a NAS out of service: its accounting is refused from then on, its address is
        free for another NAS; POST registers it again. Removing it twice changes nothing."""
        removal = await use_cases.remove_nas(store, clock, nas_id, reason, actor)
        return removal.model_dump(mode="json")

    @router.get("/nas")
    async def list_nas() -> list[dict[str, Any]]:
        """Every registered NAS with its current details, in the order registered."""
        return list((await nas_views()).values())

    return router
