"""REST endpoints of invoicing, under /api/v1."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from invoicing.application.close_billing_period import close_billing_period
from invoicing.application.queries import LedgerInvoiceQueries
from invoicing.application.set_tax_rate import set_tax_rate
from invoicing.application.settings import BillingSettings
from ispbill_core.access import BILL_RUNS_RUN, INVOICES_READ, TAX_RATES_WRITE, Principal
from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import InvoiceIssued, TaxRateSet
from ispbill_core.eventstore import EventStore
from ispbill_core.web import requires


class BillRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", examples=["2026-11"])


class BillRunResponse(BaseModel):
    period: str
    issued: list[str]
    already_issued: list[str]
    skipped: dict[str, str]


class TaxRateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str = Field(min_length=1, max_length=64)
    tax_name: str = Field(min_length=1, max_length=40)
    rate: Decimal = Field(ge=0, le=1, description="0.15 for 15%")


def invoice_view(invoice: InvoiceIssued, status_: str) -> dict[str, Any]:
    return {**invoice.model_dump(mode="json"), "status": status_}


def invoicing_router(
    store: EventStore, clock: Clock, settings: BillingSettings, queries: LedgerInvoiceQueries
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["invoicing"])

    @router.post("/bill-runs")
    async def bill_run(
        req: BillRunRequest, who: Principal = requires(BILL_RUNS_RUN)
    ) -> BillRunResponse:
        report = await close_billing_period(store, clock, settings, req.period, actor=who.actor)
        return BillRunResponse(
            period=report.period,
            issued=report.issued,
            already_issued=report.already_issued,
            skipped=report.skipped,
        )

    @router.post("/tax-rates", status_code=status.HTTP_201_CREATED)
    async def tax_rate(
        req: TaxRateRequest, who: Principal = requires(TAX_RATES_WRITE)
    ) -> TaxRateSet:
        return await set_tax_rate(store, clock, req.region, req.tax_name, req.rate, actor=who.actor)

    @router.get("/invoices", dependencies=[requires(INVOICES_READ)])
    async def list_invoices(
        customer_id: str | None = Query(default=None),
        period: str | None = Query(default=None, pattern=r"^\d{4}-(0[1-9]|1[0-2])$"),
    ) -> list[dict[str, Any]]:
        found = await queries.list_invoices(customer_id=customer_id, period=period)
        return [invoice_view(inv, st) for inv, st in sorted(found, key=lambda f: f[0].number)]

    @router.get("/invoices/{reference}", dependencies=[requires(INVOICES_READ)])
    async def show_invoice(reference: str) -> dict[str, Any]:
        found = await queries.find(reference)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no invoice {reference!r}")
        return invoice_view(*found)

    @router.get(
        "/invoices/{reference}/pdf",
        response_class=Response,
        dependencies=[requires(INVOICES_READ)],
    )
    async def invoice_pdf(reference: str) -> Response:
        found = await queries.find(reference)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no invoice {reference!r}")
        pdf = await queries.invoice_pdf(found[0].invoice_id)
        assert pdf is not None
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{found[0].number}.pdf"'},
        )

    return router
