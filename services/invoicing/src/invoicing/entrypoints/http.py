"""REST endpoints of invoicing, under /api/v1."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from invoicing.application.close_billing_period import close_billing_period
from invoicing.application.queries import LedgerInvoiceQueries
from invoicing.application.set_tax_rate import set_tax_rate
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import InvoiceIssued, TaxRateSet
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import ID_PATTERN, PERIOD_PATTERN, Period, Rate, text

#: An invoice number or id in a URL.
InvoiceRef = Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class BillRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: Period


class BillRunResponse(BaseModel):
    period: str
    issued: list[str]
    already_issued: list[str]
    skipped: dict[str, str]


class TaxRateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str = Field(pattern=ID_PATTERN, description="the tax region customers name")
    tax_name: Annotated[str, text(40)] = Field(
        description='"VAT", "GST"...; "untaxed" with rate "0" is the explicit rule that a'
        " region's customers pay no tax"
    )
    rate: Rate = Field(description='"0.15" for 15 %')


def invoice_view(invoice: InvoiceIssued, status_: str) -> dict[str, Any]:
    return {**invoice.model_dump(mode="json"), "status": status_}


def invoicing_router(
    store: EventStore, clock: Clock, settings: BillingSettings, queries: LedgerInvoiceQueries
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["invoicing"])

    @router.post("/bill-runs")
    async def bill_run(req: BillRunRequest) -> BillRunResponse:
        report = await close_billing_period(store, clock, settings, req.period)
        return BillRunResponse(
            period=report.period,
            issued=report.issued,
            already_issued=report.already_issued,
            skipped=report.skipped,
        )

    @router.post("/tax-rates", status_code=status.HTTP_201_CREATED)
    async def tax_rate(req: TaxRateRequest) -> TaxRateSet:
        return await set_tax_rate(store, clock, req.region, req.tax_name, req.rate, actor="api")

    @router.get("/invoices")
    async def list_invoices(
        customer_id: str | None = Query(default=None, pattern=ID_PATTERN),
        period: str | None = Query(default=None, pattern=PERIOD_PATTERN),
    ) -> list[dict[str, Any]]:
        found = await queries.list_invoices(customer_id=customer_id, period=period)
        return [invoice_view(inv, st) for inv, st in sorted(found, key=lambda f: f[0].number)]

    @router.get("/invoices/{reference}")
    async def show_invoice(reference: InvoiceRef) -> dict[str, Any]:
        found = await queries.find(reference)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no invoice {reference!r}")
        return invoice_view(*found)

    @router.get("/invoices/{reference}/pdf", response_class=Response)
    async def invoice_pdf(reference: InvoiceRef) -> Response:
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
