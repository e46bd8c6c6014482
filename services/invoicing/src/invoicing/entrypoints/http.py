"""REST endpoints of invoicing, under /api/v1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from invoicing.application.audit import verify_invoices
from invoicing.application.close_billing_period import BillRunCatalogue, close_billing_period
from invoicing.application.corrections import issue_credit_note, void_invoice
from invoicing.application.csv_export import csv_text
from invoicing.application.read_models import (
    InvoiceFilter,
    ProjectedCreditNotes,
    ProjectedInvoiceQueries,
)
from invoicing.application.receivables import receivables_as_of, receivables_csv
from invoicing.application.set_tax_rate import set_tax_rate
from invoicing.application.settings import BillingSettings
from invoicing.application.tax_report import tax_report, tax_report_csv
from invoicing.application.tax_rules import (
    end_tax_rule,
    grant_tax_exemption,
    revoke_tax_exemption,
    set_tax_rule,
    tax_exemptions_on,
    tax_rules_on,
)
from invoicing.domain.corrections import CorrectionRefused
from invoicing.domain.tax import NoTaxRuleInForce
from ispbill_core.access import (
    AUDIT_READ,
    BILL_RUNS_RUN,
    INVOICES_CORRECT,
    INVOICES_READ,
    TAX_RATES_READ,
    TAX_RATES_WRITE,
    Principal,
)
from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoiceVoided,
    TaxExemptionGranted,
    TaxExemptionRevoked,
    TaxRateSet,
    TaxRuleEnded,
    TaxRuleSet,
)
from ispbill_core.eventstore import ChainNotKept, EventStore
from ispbill_core.eventstore.chain import parse_anchor
from ispbill_core.input_policy import (
    ID_PATTERN,
    MAX_CURSOR,
    PERIOD_PATTERN,
    REGION_MAX_LENGTH,
    REGION_PATTERN,
    BillingDate,
    Currency,
    JsonInt,
    Label,
    MoneyText,
    Period,
    Rate,
    Reason,
    money_in,
    text,
)
from ispbill_core.web import problem_responses, requires

#: A clerk's reference of a correction: the idempotency key of a credit note.
CorrectionReference = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/#-]+$")
]

#: An invoice number or id in a URL.
InvoiceRef = Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class BillRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: Period
    dry_run: StrictBool = Field(
        default=False,
        description="draft every invoice and report them (`previews`); take no number, write"
        " nothing",
    )


class InvoicePreviewView(BaseModel):
    customer_id: str
    currency: str
    subtotal: str
    tax_total: str
    total: str
    lines: int


#: A chain head kept by an auditor: `POSITION:SHA256HEX`.
_Anchor = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,17}:[0-9a-fA-F]{64}$")]


class AuditFindingView(BaseModel):
    position: int = Field(description="global position of the recorded event found different")
    document: str = Field(description="the invoice or credit note number (or the stream)")
    customer_id: str
    period: str
    field: str
    recorded: str
    derived: str


class AuditVerifyResponse(BaseModel):
    ok: bool
    invoices_checked: int
    credit_notes_checked: int
    events_read: int
    through_position: int = Field(description="the ledger's head when the replay started")
    findings: list[AuditFindingView]


class ChainVerifyResponse(BaseModel):
    ok: bool
    checked: int
    unchained: int = Field(description="rows recorded before the ledger kept a chain")
    first_chained: int | None
    head_position: int
    head_hash: str = Field(description="keep `head_position:head_hash` as an anchor")
    broken_at: int | None = Field(description="the first global position that does not hold")
    reason: str
    anchors_checked: list[int]


class BillRunResponse(BaseModel):
    period: str
    issued: list[str]
    already_issued: list[str]
    skipped: dict[str, str] = Field(description="customer -> why a billing rule left it out")
    failed: dict[str, str] = Field(description="customer -> the unexpected error (logged)")
    dry_run: bool
    previews: list[InvoicePreviewView]


_TaxName = text(40)
#: an exemption certificate's reference, as printed on it
_Certificate = text(100)
_OptionalReason = text(500, min_length=0)


class TaxRateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str = Field(pattern=ID_PATTERN, description="the tax region customers name")
    tax_name: _TaxName = Field(
        description='"VAT", "GST"...; "untaxed" with rate "0" is the explicit rule that a'
        " region's customers pay no tax"
    )
    rate: Rate = Field(description='"0.15" for 15 %')


#: A tax region or a level of one: "BD", "BD.dhaka", "BD.dhaka.gulshan" (ADR 0029).
TaxRegion = Annotated[
    str,
    Field(
        pattern=REGION_PATTERN,
        max_length=REGION_MAX_LENGTH,
        description='a region or a level of one, levels joined by ".": "BD", "BD.dhaka"',
    ),
]
#: A tax's code: one rule per code and level at a time.
TaxCode = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$",
        description='"VAT", "SD": a deeper level\'s rule replaces a broader one\'s with the'
        " same code",
    ),
]


class TaxRuleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: TaxRegion
    tax_code: TaxCode
    name: Label = Field(description="what invoices call it")
    rate: Rate = Field(description='"0.15" for 15 %; "0" for a region that pays no tax')
    effective_from: BillingDate = Field(
        description="in force from this day (ISP's time zone); not before the current month,"
        " except while no invoice has been issued (setting up)"
    )
    compound: StrictBool = Field(
        default=False, description="charged on the taxable value plus the taxes before it"
    )
    sequence: JsonInt = Field(default=0, ge=0, le=1000, description="computing order, lowest first")


class TaxRuleEndRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: TaxRegion
    tax_code: TaxCode
    effective_from: BillingDate = Field(description="the first day the rule no longer applies")


class TaxExemptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    certificate: _Certificate = Field(
        description="the exemption certificate's reference, printed on every invoice it exempts"
    )
    tax_codes: list[TaxCode] = Field(
        default_factory=list, max_length=20, description="the taxes it exempts; empty: all"
    )
    valid_from: BillingDate
    valid_until: BillingDate | None = Field(default=None, description="inclusive; none: open")
    reason: _OptionalReason = ""


class TaxExemptionRevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    certificate: _Certificate
    effective_from: BillingDate = Field(description="the first day it no longer applies")


class TaxRuleView(BaseModel):
    tax_code: str
    name: str
    rate: Decimal
    region: str = Field(description="the level the rule was set on")
    effective_from: date | None = Field(description="none: a rate set with /tax-rates")
    compound: bool
    sequence: int


class TaxRulesInForce(BaseModel):
    region: str
    on: date
    rules: list[TaxRuleView] = Field(
        description="computing order; empty: no rule in force (the bill run reports the"
        " region's customers)"
    )


INVOICE_CSV_COLUMNS = (
    "number",
    "invoice_id",
    "customer_id",
    "customer_name",
    "tax_region",
    "period",
    "status",
    "issued_at",
    "due_on",
    "currency",
    "subtotal",
    "tax_total",
    "total",
    "cursor",
)
CREDIT_NOTE_CSV_COLUMNS = (
    "number",
    "credit_note_id",
    "invoice_number",
    "customer_id",
    "period",
    "issued_at",
    "currency",
    "subtotal",
    "tax_total",
    "total",
    "reason",
    "reference",
    "cursor",
)


def _invoice_row(invoice: InvoiceIssued, status_: str) -> dict[str, Any]:
    return {
        "number": invoice.number,
        "invoice_id": str(invoice.invoice_id),
        "customer_id": invoice.customer_id,
        "customer_name": invoice.customer_name,
        "tax_region": invoice.tax_region,
        "period": invoice.period,
        "status": status_,
        "issued_at": invoice.issued_at.isoformat(),
        "due_on": invoice.due_on.isoformat(),
        "currency": invoice.currency,
        "subtotal": f"{invoice.subtotal.amount:f}",
        "tax_total": f"{invoice.tax_total.amount:f}",
        "total": f"{invoice.total.amount:f}",
    }


def _credit_note_row(note: CreditNoteIssued) -> dict[str, Any]:
    return {
        "number": note.number,
        "credit_note_id": str(note.credit_note_id),
        "invoice_number": note.invoice_number,
        "customer_id": note.customer_id,
        "period": note.period,
        "issued_at": note.issued_at.isoformat(),
        "currency": note.currency,
        "subtotal": f"{note.subtotal.amount:f}",
        "tax_total": f"{note.tax_total.amount:f}",
        "total": f"{note.total.amount:f}",
        "reason": note.reason,
        "reference": note.reference,
    }


def _csv_response(columns: Sequence[str], rows: list[dict[str, Any]], name: str) -> Response:
    return Response(
        csv_text(columns, rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def invoice_view(invoice: InvoiceIssued, status_: str) -> dict[str, Any]:
    return {**invoice.model_dump(mode="json"), "status": status_}


class CreditNoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: MoneyText | None = Field(
        default=None,
        description="tax included, in the invoice's currency; none: everything still"
        " creditable (a full credit)",
    )
    reason: Reason
    reference: CorrectionReference = Field(
        description="the clerk's reference (ticket, letter); the same again answers the same"
        " credit note"
    )


class VoidRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


def invoicing_router(
    store: EventStore,
    clock: Clock,
    settings: BillingSettings,
    queries: ProjectedInvoiceQueries,
    catalogue: Callable[[], Awaitable[BillRunCatalogue]] | None = None,
    credit_notes: ProjectedCreditNotes | None = None,
) -> APIRouter:
    """`catalogue`: where a bill run finds its customers (the billing catalogue projection;
    without one, a scan of the log, for tests)."""
    router = APIRouter(prefix="/api/v1", tags=["invoicing"])

    @router.post("/bill-runs")
    async def bill_run(
        req: BillRunRequest, who: Principal = requires(BILL_RUNS_RUN)
    ) -> BillRunResponse:
        report = await close_billing_period(
            store, clock, settings, req.period, catalogue, actor=who.actor, dry_run=req.dry_run
        )
        return BillRunResponse(
            period=report.period,
            issued=report.issued,
            already_issued=report.already_issued,
            skipped=report.skipped,
            failed=report.failed,
            dry_run=report.dry_run,
            previews=[InvoicePreviewView(**vars(p)) for p in report.previews],
        )

    @router.get("/audit/invoices", dependencies=[requires(AUDIT_READ)])
    async def audit_invoices(
        period: str | None = Query(default=None, pattern=PERIOD_PATTERN),
        customer_id: str | None = Query(default=None, max_length=64, pattern=ID_PATTERN),
    ) -> AuditVerifyResponse:
        """Re-derive every issued invoice (of a period, of a customer) from the log and the
        plan, usage and tax versions in force when it was recorded, and check every credit
        note and number series; each difference found, to the minor unit (ADR 0031). Reads
        the whole ledger: an auditor's tool, not a page to poll."""
        report = await verify_invoices(store, settings, period=period, customer_id=customer_id)
        return AuditVerifyResponse(
            ok=report.ok,
            invoices_checked=report.invoices_checked,
            credit_notes_checked=report.credit_notes_checked,
            events_read=report.events_read,
            through_position=report.through_position,
            findings=[AuditFindingView(**vars(f)) for f in report.findings],
        )

    @router.get(
        "/audit/chain",
        dependencies=[requires(AUDIT_READ)],
        responses=problem_responses({501: "this ledger (KurrentDB) keeps no hash chain"}),
    )
    async def audit_chain(
        anchor: Annotated[
            list[_Anchor] | None,
            Query(
                max_length=100,
                description="POSITION:SHA256HEX, a head kept from an earlier verification",
            ),
        ] = None,
    ) -> ChainVerifyResponse:
        """Walk the ledger's hash chain (ADR 0031): the first row edited, deleted or moved,
        and any anchor that no longer holds."""
        anchors: dict[int, bytes] = {}
        for text_ in anchor or []:
            position, digest = parse_anchor(text_)  # its form was checked by the pattern
            anchors[position] = digest
        try:
            chain = await store.verify_chain(anchors=anchors)
        except ChainNotKept as exc:
            raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, str(exc)) from None
        return ChainVerifyResponse(ok=chain.ok, **vars(chain))

    @router.post("/tax-rates", status_code=status.HTTP_201_CREATED)
    async def tax_rate(
        req: TaxRateRequest, who: Principal = requires(TAX_RATES_WRITE)
    ) -> TaxRateSet:
        return await set_tax_rate(store, clock, req.region, req.tax_name, req.rate, actor=who.actor)

    @router.post("/tax-rules", status_code=status.HTTP_201_CREATED)
    async def tax_rule(
        req: TaxRuleRequest, who: Principal = requires(TAX_RATES_WRITE)
    ) -> TaxRuleSet:
        """Set a tax of a region level from a day (ADR 0029); repeating it changes nothing."""
        rule = TaxRuleSet(**req.model_dump())
        return await set_tax_rule(store, clock, settings.timezone, rule, actor=who.actor)

    @router.post("/tax-rules/end", status_code=status.HTTP_201_CREATED)
    async def end_rule(
        req: TaxRuleEndRequest, who: Principal = requires(TAX_RATES_WRITE)
    ) -> TaxRuleEnded:
        """End a level's rule for a tax code from a day (a broader level's applies again)."""
        end = TaxRuleEnded(**req.model_dump())
        return await end_tax_rule(store, clock, settings.timezone, end, actor=who.actor)

    @router.get("/tax-rules", dependencies=[requires(TAX_RATES_READ)])
    async def rules_in_force(
        region: str = Query(pattern=REGION_PATTERN, max_length=REGION_MAX_LENGTH),
        on: Annotated[
            BillingDate | None, Query(description="default: today in the ISP's time zone")
        ] = None,
    ) -> TaxRulesInForce:
        """The taxes a customer of `region` pays on a day, from every level of the region."""
        day = on or clock.now().astimezone(settings.timezone).date()
        try:
            rules = await tax_rules_on(store, region, day)
        except NoTaxRuleInForce:
            rules = []
        return TaxRulesInForce(
            region=region,
            on=day,
            rules=[
                TaxRuleView(
                    tax_code=r.tax_code,
                    name=r.name,
                    rate=r.rate,
                    region=r.region,
                    effective_from=r.effective_from,
                    compound=r.compound,
                    sequence=r.sequence,
                )
                for r in rules
            ],
        )

    @router.post("/customers/{customer_id}/tax-exemptions", status_code=status.HTTP_201_CREATED)
    async def grant_exemption(
        req: TaxExemptionRequest,
        customer_id: str = Path(pattern=ID_PATTERN),
        who: Principal = requires(TAX_RATES_WRITE),
    ) -> TaxExemptionGranted:
        """Exempt a customer from some or all taxes, on a certificate's strength."""
        grant = TaxExemptionGranted(
            customer_id=customer_id,
            certificate=req.certificate,
            tax_codes=tuple(dict.fromkeys(req.tax_codes)),
            valid_from=req.valid_from,
            valid_until=req.valid_until,
            reason=req.reason,
        )
        return await grant_tax_exemption(store, clock, grant, actor=who.actor)

    @router.post(
        "/customers/{customer_id}/tax-exemptions/revoke", status_code=status.HTTP_201_CREATED
    )
    async def revoke_exemption(
        req: TaxExemptionRevokeRequest,
        customer_id: str = Path(pattern=ID_PATTERN),
        who: Principal = requires(TAX_RATES_WRITE),
    ) -> TaxExemptionRevoked:
        revoke = TaxExemptionRevoked(
            customer_id=customer_id,
            certificate=req.certificate,
            effective_from=req.effective_from,
        )
        return await revoke_tax_exemption(store, clock, revoke, actor=who.actor)

    @router.get("/customers/{customer_id}/tax-exemptions", dependencies=[requires(TAX_RATES_READ)])
    async def exemptions_in_force(
        customer_id: str = Path(pattern=ID_PATTERN),
        on: Annotated[
            BillingDate | None, Query(description="default: today in the ISP's time zone")
        ] = None,
    ) -> list[TaxExemptionGranted]:
        """The customer's exemptions in force on a day."""
        day = on or clock.now().astimezone(settings.timezone).date()
        return [
            e
            for e in await tax_exemptions_on(store, customer_id, day)
            if isinstance(e, TaxExemptionGranted)
        ]

    @router.get(
        "/reports/receivables",
        dependencies=[requires(INVOICES_READ)],
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def receivables_report(
        as_of: Annotated[
            BillingDate | None,
            Query(description="the day (ISP's time zone) whose end is reported; default today"),
        ] = None,
        customer_id: str | None = Query(default=None, max_length=64, pattern=ID_PATTERN),
        format_: Literal["json", "csv"] = Query(default="json", alias="format"),
    ) -> Any:
        """Each customer's balance at the end of a day, past or present: invoices issued less
        credit notes less payments received, each by the day its document bears; an invoice
        voided by then counts for nothing; a negative balance is credit. From the log, so a
        past day's answer never changes."""
        day = as_of or clock.now().astimezone(settings.timezone).date()
        rows = await receivables_as_of(store, settings.timezone, day, customer_id=customer_id)
        if format_ == "csv":
            return Response(
                receivables_csv(rows),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="receivables-{day}.csv"'},
            )
        return [{"as_of": str(day), **row.as_text()} for row in rows]

    @router.get(
        "/reports/tax",
        dependencies=[requires(INVOICES_READ)],
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def tax_report_of(
        period: str = Query(pattern=PERIOD_PATTERN),
        format_: Literal["json", "csv"] = Query(default="json", alias="format"),
    ) -> Any:
        """The period's tax per customer region, tax and rate, from its invoices (void ones
        left out) less their credit notes: JSON rows, or CSV (`format=csv`) for the
        accountant."""
        invoices: list[tuple[InvoiceIssued, str]] = []
        before: int | None = None
        while True:
            page = await queries.search(InvoiceFilter(period=period), limit=1000, before=before)
            invoices.extend((invoice, status_) for invoice, status_, _ in page)
            if len(page) < 1000:
                break
            before = page[-1][2]
        notes: list[CreditNoteIssued] = []
        if credit_notes is not None:
            cursor: int | None = None
            while True:
                found = await credit_notes.search(period=period, limit=1000, before=cursor)
                notes.extend(note for note, _ in found)
                if len(found) < 1000:
                    break
                cursor = found[-1][1]
        rows = tax_report(period, invoices, notes)
        if format_ == "csv":
            return Response(
                tax_report_csv(rows),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="tax-{period}.csv"'},
            )
        return [row.as_text() for row in rows]

    async def invoice_of(reference: str) -> InvoiceIssued:
        found = await queries.find(reference)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no invoice {reference!r}")
        return found[0]

    @router.post(
        "/invoices/{reference}/credit-notes",
        status_code=status.HTTP_201_CREATED,
        responses={
            200: {
                "description": "the reference's credit note, recorded before",
                "model": CreditNoteIssued,
            },
            **problem_responses(
                {
                    404: "no such invoice",
                    409: "the reference names a credit note with other terms",
                }
            ),
        },
    )
    async def credit(
        reference: InvoiceRef,
        req: CreditNoteRequest,
        response: Response,
        who: Principal = requires(INVOICES_CORRECT),
    ) -> CreditNoteIssued:
        """Credit part (`amount`, tax included) or all of an issued invoice: a credit note in
        its own gapless series, its taxes in the invoice's proportions. Never more than the
        invoice has left to credit."""
        invoice = await invoice_of(reference)
        amount = None
        if req.amount is not None:
            try:
                amount = money_in(req.amount, invoice.currency)
            except (ValueError, ArithmeticError) as exc:
                raise CorrectionRefused(str(exc)) from None
        note, fresh = await issue_credit_note(
            store,
            clock,
            settings,
            invoice,
            amount=amount,
            reason=req.reason,
            reference=req.reference,
            actor=who.actor,
        )
        if not fresh:
            response.status_code = status.HTTP_200_OK
        return note

    @router.post(
        "/invoices/{reference}/void", responses=problem_responses({404: "no such invoice"})
    )
    async def void(
        reference: InvoiceRef, req: VoidRequest, who: Principal = requires(INVOICES_CORRECT)
    ) -> InvoiceVoided:
        """Void an invoice nothing was paid or credited on (else: credit it)."""
        invoice = await invoice_of(reference)
        return await void_invoice(store, clock, invoice, reason=req.reason, actor=who.actor)

    @router.get(
        "/credit-notes",
        dependencies=[requires(INVOICES_READ)],
        responses={
            200: {"content": {"text/csv": {}}},
            **problem_responses({404: "no such invoice"}),
        },
    )
    async def list_credit_notes(
        customer_id: str | None = Query(default=None, pattern=ID_PATTERN),
        invoice: str | None = Query(
            default=None,
            max_length=100,
            pattern=r"^[A-Za-z0-9_.:/-]+$",
            description="an invoice's number or id",
        ),
        period: str | None = Query(default=None, pattern=PERIOD_PATTERN),
        limit: int = Query(default=1000, ge=1, le=10_000),
        before: int | None = Query(default=None, ge=0, le=MAX_CURSOR),
        format_: Literal["json", "csv"] = Query(default="json", alias="format"),
    ) -> Any:
        """Credit notes newest first; each carries its `cursor` for the next page.
        `format=csv`: the page as CSV."""
        invoice_id = None
        if invoice is not None:
            invoice_id = (await invoice_of(invoice)).invoice_id
        found = await _credit_notes().search(
            customer_id=customer_id,
            invoice_id=invoice_id,
            period=period,
            limit=limit,
            before=before,
        )
        if format_ == "csv":
            return _csv_response(
                CREDIT_NOTE_CSV_COLUMNS,
                [{**_credit_note_row(note), "cursor": cursor} for note, cursor in found],
                "credit-notes.csv",
            )
        return [{**note.model_dump(mode="json"), "cursor": cursor} for note, cursor in found]

    @router.get(
        "/credit-notes/{reference}",
        dependencies=[requires(INVOICES_READ)],
        responses=problem_responses({404: "no such credit note"}),
    )
    async def show_credit_note(reference: InvoiceRef) -> CreditNoteIssued:
        found = await _credit_notes().find(reference)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no credit note {reference!r}")
        return found

    def _credit_notes() -> ProjectedCreditNotes:
        if credit_notes is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "this process keeps no read models")
        return credit_notes

    @router.get(
        "/invoices",
        dependencies=[requires(INVOICES_READ)],
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def list_invoices(
        customer_id: str | None = Query(default=None, pattern=ID_PATTERN),
        period: str | None = Query(default=None, pattern=PERIOD_PATTERN),
        status_: Literal["issued", "paid", "credited", "void"] | None = Query(
            default=None, alias="status"
        ),
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
        format_: Literal["json", "csv"] = Query(default="json", alias="format"),
    ) -> Any:
        """Invoices newest first, filtered; each carries its `cursor` for the next page.
        `format=csv`: the page as CSV, a row per invoice (for a spreadsheet)."""
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
        if format_ == "csv":
            return _csv_response(
                INVOICE_CSV_COLUMNS,
                [{**_invoice_row(inv, st), "cursor": cursor} for inv, st, cursor in found],
                "invoices.csv",
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
