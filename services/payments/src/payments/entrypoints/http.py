"""REST endpoints of payments, under /api/v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status

from ispbill_core.access import PAYMENTS_READ, PAYMENTS_WRITE, Principal
from ispbill_core.clock import Clock
from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import MAX_CURSOR
from ispbill_core.web import requires
from payments.application.read_models import PaymentQueries
from payments.application.record_manual_payment import InvoiceLookup, record_manual_payment
from payments.domain.commands import RecordManualPayment


def payments_router(
    store: EventStore, clock: Clock, invoices: InvoiceLookup, payments: PaymentQueries
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["payments"])

    @router.post("/payments/manual", status_code=status.HTTP_201_CREATED)
    async def record_manual(
        cmd: RecordManualPayment, who: Principal = requires(PAYMENTS_WRITE)
    ) -> PaymentReceived:
        return await record_manual_payment(store, clock, invoices, cmd, actor=who.actor)

    @router.get("/payments", dependencies=[requires(PAYMENTS_READ)])
    async def list_payments(
        customer_id: str | None = Query(default=None, max_length=64),
        invoice_id: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=100, ge=1, le=10_000),
        before: int | None = Query(
            default=None,
            ge=0,
            le=MAX_CURSOR,
            description="the `cursor` of the last payment of the page before",
        ),
    ) -> list[dict[str, Any]]:
        """Payments newest first (as recorded), with who recorded them and a `cursor`."""
        found = await payments.payments(
            customer_id=customer_id, invoice_id=invoice_id, limit=limit, before=before
        )
        return [{**payment, "cursor": cursor} for payment, cursor in found]

    return router
