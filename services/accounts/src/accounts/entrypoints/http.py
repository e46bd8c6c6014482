"""REST endpoints of the accounts service, under /api/v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from accounts.application import use_cases
from accounts.domain.commands import DefinePlan, RegisterCustomer, RegisterNas, StartSubscription
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import (
    CustomerRegistered,
    NasRegistered,
    PlanDefined,
    SubscriptionStarted,
)
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.queries import all_events_of


def accounts_router(store: EventStore, clock: Clock) -> APIRouter:
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

    @router.post("/nas", status_code=status.HTTP_201_CREATED)
    async def register_nas(cmd: RegisterNas) -> dict[str, Any]:
        event = await use_cases.register_nas(store, clock, cmd, actor)
        return event.model_dump(mode="json", exclude={"secret"})

    @router.get("/nas")
    async def list_nas() -> list[dict[str, Any]]:
        return [
            n.model_dump(mode="json", exclude={"secret"})
            for n in await all_events_of(store, NasRegistered)
        ]

    return router
