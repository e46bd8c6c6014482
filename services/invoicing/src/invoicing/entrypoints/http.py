"""REST endpoints of invoicing, under /api/v1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from invoicing.application.close_billing_period import BillRunCatalogue, close_billing_period
from invoicing.application.read_models import InvoiceFilter, ProjectedInvoiceQueries
from invoicing.application.set_tax_rate import set_tax_rate
from invoicing.application.settings import BillingSettings
from ispbill_core.access import BILL_RUNS_RUN, INVOICES_READ, TAX_RATES_WRITE, Principal
from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import InvoiceIssued, TaxRateSet
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import (
    ID_PATTERN,
    MAX_CURSOR,
    PERIOD_PATTERN,
    BillingDate,
    Currency,
    MoneyText,
    Period,
    Rate,
    text,
)
from ispbill_core.web import requires

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
    store: EventStore,
    clock: Clock,
    settings: BillingSettings,
    queries: ProjectedInvoiceQueries,
    catalogue: Callable[[], Awaitable[BillRunCatalogue]] | None = None,
) -> APIRouter:
    """`catalogue`: where a bill run finds its customers (the billing catalogue projection;
    without one, a scan of the log, for tests)."""
    router = APIRouter(prefix="/api/v1", tags=["invoicing"])

    @router.post("/bill-runs")
    async def bill_run(
        req: BillRunRequest, who: Principal = requires(BILL_RUNS_RUN)
    ) -> BillRunResponse:
        report = await close_billing_period(
            store, clock, settings, req.period, catalogue, actor=who.actor
        )
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
        customer_id: str | None = Query(default=None, pattern=ID_PATTERN),
        period: str | None = Query(default=None, pattern=PERIOD_PATTERN),
        status_: Literal["issued", "paid"] | None = Query(default=None, alias="status"),
        number: str | None = Query(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$"),
        currency: Annotated[Currency | None, Query()] = None,
        min_total: Annotated[
            MoneyText | None,
            Query(description="in `currency`; without one, in each invoice's own"),
        ] = None,
        max_total: Annotated[
            MoneyText | None,
            Query(description="in `currency`; without one, in each invoice's own"),
        ] = None,
        issued_from: Annotated[BillingDate | None, Query(description="issued on or after")] = None,
        issued_to: Annotated[BillingDate | None, Query(description="issued on or before")] = None,
        due_before: Annotated[BillingDate | None, Query()] = None,
        limit: int = Query(default=1000, ge=1, le=10_000),
        before: int | None = Query(
            default=None,
            ge=0,
            le=MAX_CURSOR,
            description="the `cursor` of the last invoice of the page before",
        ),
    ) -> list[dict[str, Any]]:
        """Invoices newest first, filtered; each carries its `cursor` for the next page."""
        found = await queries.search(
            InvoiceFilter(
                customer_id=customer_id,
                period=period,
                status=status_,
                number=number,
                currency=currency,
                min_total=None if min_total is None else Decimal(min_total),
                max_total=None if max_total is None else Decimal(max_total),
                issued_from=issued_from,
                issued_to=issued_to,
                due_before=due_before,
            ),
            limit=limit,
            before=before,
        )
        return [{**invoice_view(inv, st), "cursor": cursor} for inv, st, cursor in found]

    @router.get("/invoices/{reference}", dependencies=[requires(INVOICES_READ)])
    async def show_invoice(reference: InvoiceRef) -> dict[str, Any]:
        found = await queries.find(reference)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no invoice {reference!r}")
        return invoice_view(*found)

    @router.get(
        "/invoices/{reference}/pdf",
        response_class=Response,
        dependencies=[requires(INVOICES_READ)],
    )
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
