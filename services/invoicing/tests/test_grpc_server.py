"""InvoiceService over a real gRPC channel on loopback, answered from an in-memory read model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from invoicing.entrypoints.grpc_server import (
    METHOD_PERMISSIONS,
    SERVICE_NAME,
    InvoiceQueries,
    invoice_to_proto,
    start_grpc_server,
)
from ispbill.v1 import invoices_pb2, invoices_pb2_grpc
from ispbill_core.access import (
    AUDITOR,
    PROFILE_READ,
    Principal,
    Unauthenticated,
    bearer_metadata,
    role_permissions,
)
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoiceLine,
    LineKind,
    TaxLine,
)
from ispbill_core.money import Money

pytestmark = pytest.mark.integration

JANUARY_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
FEBRUARY_ID = uuid.UUID("00000000-0000-4000-8000-000000000002")
PDF = b"%PDF-1.7\n% fake invoice\n%%EOF\n"


def issued(
    invoice_id: uuid.UUID, number: str, customer_id: str, period: str, issued_at: datetime
) -> InvoiceIssued:
    fee = Money.of("30.00", "USD")
    usage = Money.of("4.10", "USD")
    subtotal = fee + usage
    vat = Money.of("6.82", "USD")
    return InvoiceIssued(
        invoice_id=invoice_id,
        number=number,
        customer_id=customer_id,
        customer_name=f"Customer {customer_id}",
        customer_email=f"{customer_id}@example.net",
        billing_address="1 Fibre Lane",
        period=period,
        issued_at=issued_at,
        due_on=date(2026, int(period[-2:]) + 1, 15),
        currency="USD",
        lines=(
            InvoiceLine(
                kind=LineKind.RECURRING,
                description="Fiber 100, monthly fee",
                quantity=Decimal(1),
                unit="month",
                unit_price=fee,
                amount=fee,
            ),
            InvoiceLine(
                kind=LineKind.USAGE,
                description="Overage",
                quantity=Decimal("2.05"),
                unit="GB",
                unit_price=Money.of("2.00", "USD"),
                amount=usage,
                source_trace_ids=("4bf92f3577b34da6a3ce929d0e0e4736",),
            ),
        ),
        subtotal=subtotal,
        taxes=(TaxLine(tax_name="VAT", rate=Decimal("0.20"), taxable=subtotal, amount=vat),),
        tax_total=vat,
        total=subtotal + vat,
    )


JANUARY = issued(JANUARY_ID, "INV-2026-000001", "c-1", "2026-01", datetime(2026, 2, 1, tzinfo=UTC))
FEBRUARY = issued(
    FEBRUARY_ID, "INV-2026-000002", "c-2", "2026-02", datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC)
)


@dataclass
class InMemoryInvoices:
    """InvoiceQueries over a dict: the read model the real projection will replace."""

    invoices: dict[uuid.UUID, tuple[InvoiceIssued, str]]
    pdfs: dict[uuid.UUID, bytes]

    async def get_invoice(self, invoice_id: uuid.UUID) -> tuple[InvoiceIssued, str] | None:
        return self.invoices.get(invoice_id)

    async def list_invoices(
        self, *, customer_id: str | None, period: str | None
    ) -> list[tuple[InvoiceIssued, str]]:
        return [
            (invoice, status)
            for invoice, status in self.invoices.values()
            if customer_id in (None, invoice.customer_id) and period in (None, invoice.period)
        ]

    async def invoice_pdf(self, invoice_id: uuid.UUID) -> bytes | None:
        return self.pdfs.get(invoice_id)


CREDIT_NOTE = CreditNoteIssued(
    credit_note_id=uuid.UUID("00000000-0000-4000-8000-0000000000c1"),
    number="CN-000001",
    invoice_id=JANUARY_ID,
    invoice_number=JANUARY.number,
    customer_id="c-1",
    period="2026-01",
    issued_at=datetime(2026, 2, 10, tzinfo=UTC),
    reason="outage",
    reference="T-1",
    currency="USD",
    lines=(),
    subtotal=Money.of("10.00", "USD"),
    taxes=(),
    tax_total=Money.zero("USD"),
    total=Money.of("10.00", "USD"),
    invoice_credited=Money.of("10.00", "USD"),
)


@dataclass
class InMemoryCreditNotes:
    notes: list[CreditNoteIssued]

    async def search(
        self,
        *,
        customer_id: str | None = None,
        invoice_id: uuid.UUID | None = None,
        period: str | None = None,
        limit: int = 1000,
        before: int | None = None,
    ) -> list[tuple[CreditNoteIssued, int]]:
        found = [
            (note, cursor)
            for cursor, note in enumerate(self.notes, start=1)
            if customer_id in (None, note.customer_id)
            and invoice_id in (None, note.invoice_id)
            and period in (None, note.period)
            and (before is None or cursor < before)
        ]
        return list(reversed(found))[:limit]


AUDITOR_TOKEN = "auditor-token"
PROFILE_ONLY_TOKEN = "profile-only-token"


class Tokens:
    """Two known tokens: an auditor's, and one scoped to the profile (no invoices:read)."""

    async def authenticate(self, token: str) -> Principal:
        if token == AUDITOR_TOKEN:
            return Principal("ann", AUDITOR, "t1", role_permissions(AUDITOR))
        if token == PROFILE_ONLY_TOKEN:
            return Principal("ann", AUDITOR, "t2", frozenset({PROFILE_READ}))
        raise Unauthenticated("unknown token")


class SendsToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = details._replace(
            metadata=[*(details.metadata or ()), *bearer_metadata(self.token)]
        )
        return await continuation(details, request)


@pytest.fixture
async def server_port() -> AsyncIterator[int]:
    queries: InvoiceQueries = InMemoryInvoices(
        invoices={JANUARY_ID: (JANUARY, "paid"), FEBRUARY_ID: (FEBRUARY, "issued")},
        pdfs={JANUARY_ID: PDF},
    )
    server, port = await start_grpc_server(
        queries,
        credit_notes=InMemoryCreditNotes([CREDIT_NOTE]),
        authenticator=Tokens(),
        host="127.0.0.1",
        port=0,
    )
    assert port > 0
    try:
        yield port
    finally:
        await server.stop(grace=None)


@pytest.fixture
async def channel(server_port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server_port}", interceptors=[SendsToken(AUDITOR_TOKEN)]
    ) as chan:
        yield chan


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("not-a-token", grpc.StatusCode.UNAUTHENTICATED),
        (PROFILE_ONLY_TOKEN, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_every_method_needs_a_token_with_its_permission(
    server_port: int, token: str | None, code: grpc.StatusCode
) -> None:
    interceptors = [] if token is None else [SendsToken(token)]
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server_port}", interceptors=interceptors
    ) as chan:
        stub = invoices_pb2_grpc.InvoiceServiceStub(chan)
        calls = [
            stub.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=str(JANUARY_ID))),
            stub.ListInvoices(invoices_pb2.ListInvoicesRequest()),
            stub.GetInvoicePdf(invoices_pb2.GetInvoicePdfRequest(invoice_id=str(JANUARY_ID))),
            stub.ListCreditNotes(invoices_pb2.ListCreditNotesRequest()),
        ]
        assert len(calls) == len(METHOD_PERMISSIONS)
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == code


def test_a_method_without_a_permission_stops_the_start() -> None:
    from ispbill_core.grpc_access import check_methods_declared
    from ispbill_core.web import UndeclaredPermission

    service = invoices_pb2.DESCRIPTOR.services_by_name["InvoiceService"]
    partial = dict(list(METHOD_PERMISSIONS.items())[:-1])
    with pytest.raises(UndeclaredPermission, match="ListCreditNotes"):
        check_methods_declared(partial, [service])


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> invoices_pb2_grpc.InvoiceServiceAsyncStub:
    # The async stub type exists only in the .pyi; the overloads need grpc's own types to pick it.
    return cast(
        "invoices_pb2_grpc.InvoiceServiceAsyncStub", invoices_pb2_grpc.InvoiceServiceStub(channel)
    )


async def test_get_invoice_returns_every_field(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub,
) -> None:
    response = await stub.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=str(JANUARY_ID)))

    assert response.invoice == invoice_to_proto(JANUARY, "paid")
    invoice = response.invoice
    assert invoice.invoice_id == str(JANUARY_ID)
    assert invoice.number == "INV-2026-000001"
    assert invoice.status == invoices_pb2.INVOICE_STATUS_PAID
    assert invoice.period == "2026-01"
    assert invoice.due_on == "2026-02-15"
    assert invoice.issued_at.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 1, tzinfo=UTC)
    assert invoice.currency_code == "USD"
    # Money travels as exact decimal strings, with the currency's minor-unit digits.
    assert invoice.subtotal == invoices_pb2.Money(currency_code="USD", amount="34.10")
    assert invoice.tax_total.amount == "6.82"
    assert invoice.total.amount == "40.92"
    recurring, usage = invoice.lines
    assert recurring.kind == invoices_pb2.LINE_KIND_RECURRING
    assert recurring.quantity == "1"
    assert usage.kind == invoices_pb2.LINE_KIND_USAGE
    assert usage.quantity == "2.05"
    assert usage.unit_price.amount == "2.00"
    assert list(usage.source_trace_ids) == ["4bf92f3577b34da6a3ce929d0e0e4736"]
    (vat,) = invoice.taxes
    assert (vat.tax_name, vat.rate, vat.taxable.amount, vat.amount.amount) == (
        "VAT",
        "0.20",
        "34.10",
        "6.82",
    )


async def test_get_unknown_invoice_is_not_found(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("bad_id", ["", "INV-2026-000001", "00000000-0000-4000-8000"])
async def test_malformed_invoice_id_is_invalid_argument(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub, bad_id: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=bad_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInvoicePdf(invoices_pb2.GetInvoicePdfRequest(invoice_id=bad_id))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_by_customer_and_period(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub,
) -> None:
    async def numbers(customer_id: str | None = None, period: str | None = None) -> list[str]:
        request = invoices_pb2.ListInvoicesRequest(customer_id=customer_id, period=period)
        response = await stub.ListInvoices(request)
        assert response.next_page_token == ""
        return [invoice.number for invoice in response.invoices]

    assert await numbers() == ["INV-2026-000002", "INV-2026-000001"]  # newest first
    assert await numbers(customer_id="c-1") == ["INV-2026-000001"]
    assert await numbers(period="2026-02") == ["INV-2026-000002"]
    assert await numbers(customer_id="c-1", period="2026-02") == []
    assert await numbers(customer_id="c-nobody") == []


async def test_list_pages_through_every_invoice_once(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub,
) -> None:
    first = await stub.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1))
    assert [i.number for i in first.invoices] == ["INV-2026-000002"]
    assert first.invoices[0].status == invoices_pb2.INVOICE_STATUS_ISSUED
    assert first.next_page_token

    second = await stub.ListInvoices(
        invoices_pb2.ListInvoicesRequest(page_size=1, page_token=first.next_page_token)
    )
    assert [i.number for i in second.invoices] == ["INV-2026-000001"]
    assert second.next_page_token == ""


@pytest.mark.parametrize(
    "request_",
    [
        invoices_pb2.ListInvoicesRequest(page_size=-1),
        invoices_pb2.ListInvoicesRequest(page_token="not a token!"),
        invoices_pb2.ListInvoicesRequest(period="9999-12"),
        invoices_pb2.ListInvoicesRequest(period="2026-1"),
        invoices_pb2.ListInvoicesRequest(customer_id="c 1\n"),
    ],
)
async def test_list_refuses_bad_paging_and_filters(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub, request_: invoices_pb2.ListInvoicesRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListInvoices(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_page_token_is_bound_to_its_filters(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub,
) -> None:
    first = await stub.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListInvoices(
            invoices_pb2.ListInvoicesRequest(
                customer_id="c-1", page_size=1, page_token=first.next_page_token
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_invoice_pdf_returns_the_bytes(
    stub: invoices_pb2_grpc.InvoiceServiceAsyncStub,
) -> None:
    response = await stub.GetInvoicePdf(
        invoices_pb2.GetInvoicePdfRequest(invoice_id=str(JANUARY_ID))
    )
    assert response.content == PDF
    assert response.content_type == "application/pdf"
    assert response.filename == "INV-2026-000001.pdf"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInvoicePdf(invoices_pb2.GetInvoicePdfRequest(invoice_id=str(FEBRUARY_ID)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
async def test_health_check_is_serving(channel: grpc.aio.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_service_name_is_the_proto_full_name() -> None:
    assert SERVICE_NAME == "ispbill.v1.InvoiceService"


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown invoice status"):
        invoice_to_proto(JANUARY, "lost")


def test_credited_and_void_invoices_have_their_own_status() -> None:
    assert invoice_to_proto(JANUARY, "credited").status == invoices_pb2.INVOICE_STATUS_CREDITED
    assert invoice_to_proto(JANUARY, "void").status == invoices_pb2.INVOICE_STATUS_VOID


async def test_credit_notes_are_listed_by_invoice_customer_and_period(
    channel: grpc.aio.Channel,
) -> None:
    stub = invoices_pb2_grpc.InvoiceServiceStub(channel)
    found = await stub.ListCreditNotes(
        invoices_pb2.ListCreditNotesRequest(invoice_id=str(JANUARY_ID))
    )
    [note] = found.credit_notes
    assert (note.number, note.invoice_number, note.total.amount, note.reference) == (
        "CN-000001",
        JANUARY.number,
        "10.00",
        "T-1",
    )
    none = await stub.ListCreditNotes(invoices_pb2.ListCreditNotesRequest(customer_id="c-2"))
    assert list(none.credit_notes) == [] and none.next_page_token == ""
    for bad in (
        invoices_pb2.ListCreditNotesRequest(invoice_id="nope"),
        invoices_pb2.ListCreditNotesRequest(period="2026-13"),
        invoices_pb2.ListCreditNotesRequest(page_token="x"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListCreditNotes(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_invoices_are_searched_by_status_number_total_and_issue_day(
    channel: grpc.aio.Channel,
) -> None:
    stub = invoices_pb2_grpc.InvoiceServiceStub(channel)

    async def numbers(**search: str) -> list[str]:
        found = await stub.ListInvoices(invoices_pb2.ListInvoicesRequest(**search))
        return [i.number for i in found.invoices]

    assert await numbers(status="paid") == [JANUARY.number]
    assert await numbers(number=FEBRUARY.number) == [FEBRUARY.number]
    assert await numbers(min_total="40.92", max_total="40.92") == [FEBRUARY.number, JANUARY.number]
    assert await numbers(min_total="40.93") == []
    assert await numbers(issued_from="2026-02-02") == [FEBRUARY.number]
    assert await numbers(issued_to="2026-02-01", currency_code="USD") == [JANUARY.number]
    for bad in ({"status": "lost"}, {"min_total": "lots"}, {"issued_from": "2026-02-30"}):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListInvoices(invoices_pb2.ListInvoicesRequest(**bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
