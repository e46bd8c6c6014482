"""REST endpoints of the accounts service, under /api/v1."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import AfterValidator

from accounts.application import use_cases
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
    NasRegisteredV1,
    PlanDefined,
    SubscriptionStarted,
    nas_secret_context,
)
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.input_policy import one_line_text
from ispbill_core.sealing import Keyring, SealingError, sealed_with

#: How the ledger holds a NAS's secret (`secret_storage`); none of them is a secret.
SEALED, PLAINTEXT, EXPOSED = "sealed", "plaintext", "exposed"


def nas_view(
    event: AnyNasRegistered, keyring: Keyring, earlier_plaintext: frozenset[bytes] = frozenset()
) -> dict[str, Any]:
    """A NAS as the API shows it: never its secret, sealed or not.

    `secret_storage` is "sealed"; "plaintext" for a NAS registered before secrets were sealed;
    "exposed" when it is sealed now but the same secret is in plain text in a registration from
    before sealing, of this NAS or another (`earlier_plaintext`): change the secret on the NAS
    and here. `secret_key_id`
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
        if secret in earlier_plaintext:
            storage = EXPOSED
    return {**view, "secret_storage": storage, "secret_key_id": sealed_with(event.secret_sealed)}


def accounts_router(store: EventStore, clock: Clock, keyring: Keyring) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["accounts"])
    actor = "api"

    @router.post("/plans", status_code=status.HTTP_201_CREATED)
    async def define_plan(cmd: DefinePlan) -> PlanDefined:
        return await use_cases.define_plan(store, clock, cmd, actor)

    @router.get("/plans")
    async def list_plans() -> list[PlanDefined]:
        return await all_events_of(store, PlanDefined)

    @router.post("/customers", status_code=status.HTTP_201_CREATED)
    async def register_customer(cmd: RegisterCustomer) -> CustomerRegistered:
        return await use_cases.register_customer(store, clock, cmd, actor)

    @router.get("/customers")
    async def list_customers() -> list[CustomerRegistered]:
        return await all_events_of(store, CustomerRegistered)

    @router.post("/subscriptions", status_code=status.HTTP_201_CREATED)
    async def start_subscription(cmd: StartSubscription) -> SubscriptionStarted:
        return await use_cases.start_subscription(store, clock, cmd, actor)

    @router.get("/subscriptions")
    async def list_subscriptions() -> list[SubscriptionStarted]:
        return await all_events_of(store, SubscriptionStarted)

    async def nas_views() -> dict[str, dict[str, Any]]:
        """Every NAS in service with its current details, in the order registered."""
        return {
            nas_id: {
                **nas_view(nas.current, keyring, nas.plaintext_secrets),
                "version": nas.version,
            }
            for nas_id, nas in (await use_cases.nases_in_service(store)).items()
        }

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
        nas_id: str,
        reason: Annotated[str, Query(max_length=200), AfterValidator(one_line_text)] = "",
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
