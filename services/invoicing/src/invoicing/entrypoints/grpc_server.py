"""The gRPC entry point of invoicing: ispbill.v1.InvoiceService, health checks, reflection."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ispbill.v1 import invoices_pb2, invoices_pb2_grpc
from ispbill_core.access import INVOICES_READ, Authenticator
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoiceLine,
    LineKind,
    TaxLine,
)
from ispbill_core.grpc_server import GrpcService, serve_grpc
from ispbill_core.input_policy import ID_PATTERN, PERIOD_PATTERN
from ispbill_core.money import Money

_SERVICE = invoices_pb2.DESCRIPTOR.services_by_name["InvoiceService"]
SERVICE_NAME: str = _SERVICE.full_name
#: The permission of each method; a method missing here stops the server from starting.
METHOD_PERMISSIONS: dict[str, str] = {
    f"/{SERVICE_NAME}/GetInvoice": INVOICES_READ,
    f"/{SERVICE_NAME}/ListInvoices": INVOICES_READ,
    f"/{SERVICE_NAME}/GetInvoicePdf": INVOICES_READ,
    f"/{SERVICE_NAME}/ListCreditNotes": INVOICES_READ,
}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_STATUSES: dict[str, invoices_pb2.InvoiceStatus.ValueType] = {
    "issued": invoices_pb2.INVOICE_STATUS_ISSUED,
    "paid": invoices_pb2.INVOICE_STATUS_PAID,
    "credited": invoices_pb2.INVOICE_STATUS_CREDITED,
    "void": invoices_pb2.INVOICE_STATUS_VOID,
}
_LINE_KINDS: dict[LineKind, invoices_pb2.LineKind.ValueType] = {
    LineKind.RECURRING: invoices_pb2.LINE_KIND_RECURRING,
    LineKind.USAGE: invoices_pb2.LINE_KIND_USAGE,
    LineKind.CREDIT: invoices_pb2.LINE_KIND_CREDIT,
    LineKind.USAGE_ADJUSTMENT: invoices_pb2.LINE_KIND_USAGE_ADJUSTMENT,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvoiceQueries(Protocol):
    """The read side the gRPC service answers from (a projection of the ledger)."""

    async def get_invoice(self, invoice_id: uuid.UUID) -> tuple[InvoiceIssued, str] | None:
        """The invoice and its status (issued, paid, credited, void), or None when unknown."""
        ...

    async def list_invoices(
        self, *, customer_id: str | None, period: str | None
    ) -> list[tuple[InvoiceIssued, str]]:
        """Every invoice matching the filters that are not None, with its status."""
        ...

    async def invoice_pdf(self, invoice_id: uuid.UUID) -> bytes | None:
        """The rendered PDF, or None when the invoice is unknown."""
        ...


class CreditNoteQueries(Protocol):
    """The credit notes' read side (invoicing.application.read_models.ProjectedCreditNotes)."""

    async def search(
        self,
        *,
        customer_id: str | None = None,
        invoice_id: uuid.UUID | None = None,
        period: str | None = None,
        limit: int = 1000,
        before: int | None = None,
    ) -> list[tuple[CreditNoteIssued, int]]:
        """(credit note, cursor) newest first; the last cursor as `before` for more."""
        ...


# --- conversions -------------------------------------------------------------------------------


def _decimal_text(value: Decimal) -> str:
    # "f" keeps plain notation: str(Decimal("1E+1")) would be "1E+1", which no client expects.
    return format(value, "f")


def money_to_proto(money: Money) -> invoices_pb2.Money:
    return invoices_pb2.Money(currency_code=money.currency, amount=_decimal_text(money.amount))


def line_to_proto(line: InvoiceLine) -> invoices_pb2.InvoiceLine:
    return invoices_pb2.InvoiceLine(
        kind=_LINE_KINDS.get(line.kind, invoices_pb2.LINE_KIND_UNSPECIFIED),
        description=line.description,
        quantity=_decimal_text(line.quantity),
        unit=line.unit,
        unit_price=money_to_proto(line.unit_price),
        amount=money_to_proto(line.amount),
        source_trace_ids=list(line.source_trace_ids),
        adjusts_invoice=line.adjusts_invoice or "",
        adjusts_period=line.adjusts_period or "",
    )


def tax_to_proto(tax: TaxLine) -> invoices_pb2.TaxLine:
    return invoices_pb2.TaxLine(
        tax_name=tax.tax_name,
        rate=_decimal_text(tax.rate),
        taxable=money_to_proto(tax.taxable),
        amount=money_to_proto(tax.amount),
    )


def credit_note_to_proto(note: CreditNoteIssued) -> invoices_pb2.CreditNote:
    issued_at = Timestamp()
    issued_at.FromDatetime(note.issued_at.astimezone(UTC))
    return invoices_pb2.CreditNote(
        credit_note_id=str(note.credit_note_id),
        number=note.number,
        invoice_id=str(note.invoice_id),
        invoice_number=note.invoice_number,
        customer_id=note.customer_id,
        period=note.period,
        issued_at=issued_at,
        reason=note.reason,
        reference=note.reference,
        currency_code=note.currency,
        lines=[line_to_proto(line) for line in note.lines],
        subtotal=money_to_proto(note.subtotal),
        taxes=[tax_to_proto(tax) for tax in note.taxes],
        tax_total=money_to_proto(note.tax_total),
        total=money_to_proto(note.total),
        invoice_credited=money_to_proto(note.invoice_credited),
    )


def invoice_to_proto(invoice: InvoiceIssued, status: str) -> invoices_pb2.Invoice:
    """The wire form of an issued invoice; status is "issued", "paid", "credited" or "void"."""
    try:
        status_value = _STATUSES[str(status)]
    except KeyError:
        raise ValueError(f"unknown invoice status {status!r}") from None
    issued_at = Timestamp()
    issued_at.FromDatetime(invoice.issued_at.astimezone(UTC))
    return invoices_pb2.Invoice(
        invoice_id=str(invoice.invoice_id),
        number=invoice.number,
        customer_id=invoice.customer_id,
        customer_name=invoice.customer_name,
        customer_email=invoice.customer_email,
        billing_address=invoice.billing_address,
        period=invoice.period,
        issued_at=issued_at,
        due_on=invoice.due_on.isoformat(),
        currency_code=invoice.currency,
        lines=[line_to_proto(line) for line in invoice.lines],
        subtotal=money_to_proto(invoice.subtotal),
        taxes=[tax_to_proto(tax) for tax in invoice.taxes],
        tax_total=money_to_proto(invoice.tax_total),
        total=money_to_proto(invoice.total),
        status=status_value,
    )


# --- paging ------------------------------------------------------------------------------------

#: Newest first: (issued_at in microseconds since the epoch, number, invoice id).
_SortKey = tuple[int, str, str]


def _sort_key(invoice: InvoiceIssued) -> _SortKey:
    micros = (invoice.issued_at - _EPOCH) // timedelta(microseconds=1)
    return (micros, invoice.number, str(invoice.invoice_id))


def _encode_page_token(after: _SortKey, customer_id: str | None, period: str | None) -> str:
    # Keyset, not offset: an invoice issued between two pages neither shifts nor repeats rows.
    payload = {"after": list(after), "customer_id": customer_id, "period": period}
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, customer_id: str | None, period: str | None) -> _SortKey:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        micros, number, invoice_id = payload["after"]
        key: _SortKey = (int(micros), str(number), str(invoice_id))
        same_filters = payload["customer_id"] == customer_id and payload["period"] == period
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "malformed page_token") from None
    if not same_filters:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT, "page_token was issued for different filters"
        )
    return key


def _page_size(requested: int) -> int:
    if requested < 0:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


# --- the service -------------------------------------------------------------------------------


class _Refused(Exception):
    """A request the service answers with a status code instead of a response."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self_ = TypeVar("Self_")
_Handler = Callable[[Self_, Req, Any], Awaitable[Resp]]


def _answers_refusals(handler: _Handler[Self_, Req, Resp]) -> _Handler[Self_, Req, Resp]:
    """Turn a _Refused raised by a handler into the matching gRPC status."""

    @functools.wraps(handler)
    async def wrapped(self: Self_, request: Req, context: Any) -> Resp:
        try:
            return await handler(self, request, context)
        except _Refused as refused:
            await context.abort(refused.code, refused.details)
            raise AssertionError("context.abort returned") from None

    return wrapped


def _parse_invoice_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"invoice_id {text!r} is not a UUID"
        ) from None


def _check_filters(customer_id: str | None, period: str | None) -> None:
    """The same rules as the REST API's query parameters (ispbill_core.input_policy)."""
    if customer_id is not None and not re.fullmatch(ID_PATTERN.strip("^$"), customer_id):
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "customer_id is not a customer id")
    if period is not None and not re.fullmatch(PERIOD_PATTERN.strip("^$"), period):
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT, "period is YYYY-MM, from 2000-01 to 2099-12"
        )


def _not_found(invoice_id: uuid.UUID) -> _Refused:
    return _Refused(grpc.StatusCode.NOT_FOUND, f"no invoice {invoice_id}")


class InvoiceService(invoices_pb2_grpc.InvoiceServiceServicer):
    """ispbill.v1.InvoiceService answered from an InvoiceQueries read model."""

    def __init__(
        self, queries: InvoiceQueries, credit_notes: CreditNoteQueries | None = None
    ) -> None:
        self._queries = queries
        self._credit_notes = credit_notes

    @_answers_refusals
    async def GetInvoice(
        self, request: invoices_pb2.GetInvoiceRequest, context: Any
    ) -> invoices_pb2.GetInvoiceResponse:
        invoice_id = _parse_invoice_id(request.invoice_id)
        found = await self._queries.get_invoice(invoice_id)
        if found is None:
            raise _not_found(invoice_id)
        return invoices_pb2.GetInvoiceResponse(invoice=invoice_to_proto(*found))

    @_answers_refusals
    async def ListInvoices(
        self, request: invoices_pb2.ListInvoicesRequest, context: Any
    ) -> invoices_pb2.ListInvoicesResponse:
        customer_id = request.customer_id if request.HasField("customer_id") else None
        period = request.period if request.HasField("period") else None
        _check_filters(customer_id, period)
        size = _page_size(request.page_size)
        after = (
            _decode_page_token(request.page_token, customer_id, period)
            if request.page_token
            else None
        )
        keep = _search_filter(request)
        found = await self._queries.list_invoices(customer_id=customer_id, period=period)
        rows: Sequence[tuple[InvoiceIssued, str]] = sorted(
            (row for row in found if keep(*row)), key=lambda row: _sort_key(row[0]), reverse=True
        )
        if after is not None:
            rows = [row for row in rows if _sort_key(row[0]) < after]
        page, rest = rows[:size], rows[size:]
        next_token = _encode_page_token(_sort_key(page[-1][0]), customer_id, period) if rest else ""
        return invoices_pb2.ListInvoicesResponse(
            invoices=[invoice_to_proto(invoice, status) for invoice, status in page],
            next_page_token=next_token,
        )

    @_answers_refusals
    async def GetInvoicePdf(
        self, request: invoices_pb2.GetInvoicePdfRequest, context: Any
    ) -> invoices_pb2.GetInvoicePdfResponse:
        invoice_id = _parse_invoice_id(request.invoice_id)
        pdf = await self._queries.invoice_pdf(invoice_id)
        if pdf is None:
            raise _not_found(invoice_id)
        found = await self._queries.get_invoice(invoice_id)
        filename = f"{found[0].number}.pdf" if found is not None else f"{invoice_id}.pdf"
        return invoices_pb2.GetInvoicePdfResponse(
            content=pdf, content_type="application/pdf", filename=filename
        )

    @_answers_refusals
    async def ListCreditNotes(
        self, request: invoices_pb2.ListCreditNotesRequest, context: Any
    ) -> invoices_pb2.ListCreditNotesResponse:
        if self._credit_notes is None:
            raise _Refused(grpc.StatusCode.UNIMPLEMENTED, "no credit-note read model here")
        customer_id = request.customer_id if request.HasField("customer_id") else None
        period = request.period if request.HasField("period") else None
        _check_filters(customer_id, period)
        invoice_id = (
            _parse_invoice_id(request.invoice_id) if request.HasField("invoice_id") else None
        )
        size = _page_size(request.page_size)
        before: int | None = None
        if request.page_token:
            try:
                before = int(request.page_token)
            except ValueError:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "malformed page_token") from None
            if not 0 < before < 2**62:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "malformed page_token")
        found = await self._credit_notes.search(
            customer_id=customer_id,
            invoice_id=invoice_id,
            period=period,
            limit=size + 1,
            before=before,
        )
        page = found[:size]
        next_token = str(page[-1][1]) if len(found) > size else ""
        return invoices_pb2.ListCreditNotesResponse(
            credit_notes=[credit_note_to_proto(note) for note, _ in page],
            next_page_token=next_token,
        )


def _search_filter(
    request: invoices_pb2.ListInvoicesRequest,
) -> Callable[[InvoiceIssued, str], bool]:
    """ListInvoices' search fields (status, number, currency, total range, issue days), checked
    as the REST search checks them; what is not set matches everything."""

    def optional(name: str) -> str | None:
        return getattr(request, name) if request.HasField(name) else None

    status = optional("status")
    if status is not None and status not in _STATUSES:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "status is issued, paid, credited or void")
    number, currency = optional("number"), optional("currency_code")
    bounds: list[Decimal | None] = []
    for name in ("min_total", "max_total"):
        text = optional(name)
        try:
            value = None if text is None else Decimal(text)
        except ArithmeticError:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is a decimal") from None
        if value is not None and not value.is_finite():
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is a decimal")
        bounds.append(value)
    low, high = bounds
    days: list[date | None] = []
    for name in ("issued_from", "issued_to"):
        text = optional(name)
        try:
            days.append(None if text is None else date.fromisoformat(text))
        except ValueError:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is YYYY-MM-DD") from None
    first, last = days

    def keep(invoice: InvoiceIssued, invoice_status: str) -> bool:
        day = invoice.issued_at.astimezone(UTC).date()
        return (
            (status is None or invoice_status == status)
            and (number is None or invoice.number == number)
            and (currency is None or invoice.currency == currency)
            and (low is None or invoice.total.amount >= low)
            and (high is None or invoice.total.amount <= high)
            and (first is None or day >= first)
            and (last is None or day <= last)
        )

    return keep


def invoice_grpc_service(
    queries: InvoiceQueries, credit_notes: CreditNoteQueries | None = None
) -> GrpcService:
    """InvoiceService as ispbill_core.grpc_server.serve_grpc takes it (beside other services)."""
    return GrpcService(
        descriptor=_SERVICE,
        permissions=METHOD_PERMISSIONS,
        register=lambda server: invoices_pb2_grpc.add_InvoiceServiceServicer_to_server(
            InvoiceService(queries, credit_notes), server
        ),
    )


async def start_grpc_server(
    queries: InvoiceQueries,
    *,
    credit_notes: CreditNoteQueries | None = None,
    authenticator: Authenticator,
    host: str = "127.0.0.1",
    port: int = 0,
) -> tuple[grpc.aio.Server, int]:
    """Start InvoiceService alone, with health checks and reflection, on host:port; returns the
    server and bound port.

    Every InvoiceService call needs `authorization: Bearer <token>` with the method's
    permission (METHOD_PERMISSIONS); health checks and reflection are open.
    Port 0 asks the OS for a free port. Stop with ``await server.stop(grace)``. The app serves
    it beside AccountsService with serve_grpc and invoice_grpc_service.
    """
    return await serve_grpc(
        [invoice_grpc_service(queries, credit_notes)],
        authenticator=authenticator,
        host=host,
        port=port,
    )
