"""REST endpoints of payments, under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter, status

from ispbill_core.access import PAYMENTS_WRITE, Principal
from ispbill_core.clock import Clock
from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.eventstore import EventStore
from ispbill_core.web import requires
from payments.application.record_manual_payment import InvoiceLookup, record_manual_payment
from payments.domain.commands import RecordManualPayment


def payments_router(store: EventStore, clock: Clock, invoices: InvoiceLookup) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["payments"])

    @router.post("/payments/manual", status_code=status.HTTP_201_CREATED)
    async def record_manual(
        cmd: RecordManualPayment, who: Principal = requires(PAYMENTS_WRITE)
    ) -> PaymentReceived:
        return await record_manual_payment(store, clock, invoices, cmd, actor=who.actor)

    return router
