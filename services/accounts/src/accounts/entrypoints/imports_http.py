"""REST endpoint of the accounts service for bulk imports, under /api/v1."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel

from accounts.application.import_customers import (
    MAX_ROWS,
    CustomerRow,
    RowResult,
    import_customers,
)
from ispbill_core.access import CUSTOMERS_WRITE, Principal
from ispbill_core.clock import Clock
from ispbill_core.eventstore import EventStore
from ispbill_core.web import requires


class CustomerImport(BaseModel):
    dry_run: bool
    created: int
    unchanged: int
    invalid: int
    results: list[RowResult]


def imports_router(store: EventStore, clock: Clock) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["accounts"])

    @router.post("/imports/customers")
    async def import_customer_rows(
        rows: Annotated[list[CustomerRow], Body(max_length=MAX_ROWS)],
        dry_run: bool = Query(default=False, description="check every row, record nothing"),
        who: Principal = requires(CUSTOMERS_WRITE),
    ) -> CustomerImport:
        """Customers and their subscriptions, one spreadsheet row each (at most 1000 per
        request; `ispbill import customers` sends a file in chunks). Each row is checked and,
        unless `dry_run`, the valid ones recorded; the answer has one result per row:
        created, unchanged (the ledger holds it already: running an import twice records
        nothing) or invalid with its reasons. Always 200: an invalid row is a result, not an
        error of the request."""
        results = await import_customers(store, clock, rows, who.actor, dry_run=dry_run)
        count = {
            s: sum(r.status == s for r in results) for s in ("created", "unchanged", "invalid")
        }
        return CustomerImport(dry_run=dry_run, results=results, **count)

    return router
