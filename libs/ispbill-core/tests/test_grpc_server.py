"""serve_grpc: services composed on one server, their permissions checked, health, reflection."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ispbill.v1 import invoices_pb2, invoices_pb2_grpc
from ispbill_core.access import INVOICES_READ, Principal, Unauthenticated
from ispbill_core.grpc_server import GrpcService, Refused, answers_refusals, serve_grpc
from ispbill_core.web import UndeclaredPermission

pytestmark = pytest.mark.integration

_SERVICE = invoices_pb2.DESCRIPTOR.services_by_name["InvoiceService"]
NAME = _SERVICE.full_name
TABLE = {f"/{NAME}/{m.name}": INVOICES_READ for m in _SERVICE.methods}
TOKEN = "reader"


class Tokens:
    async def authenticate(self, token: str) -> Principal:
        if token == TOKEN:
            return Principal("ann", "auditor", "t1", frozenset({INVOICES_READ}))
        raise Unauthenticated("unknown token")


class RefusesEverything(invoices_pb2_grpc.InvoiceServiceServicer):
    @answers_refusals
    async def GetInvoice(self, request: Any, context: Any) -> Any:
        raise Refused(grpc.StatusCode.NOT_FOUND, f"no invoice {request.invoice_id}")


def invoices(table: dict[str, str] = TABLE) -> GrpcService:
    return GrpcService(
        descriptor=_SERVICE,
        permissions=table,
        register=lambda server: invoices_pb2_grpc.add_InvoiceServiceServicer_to_server(
            RefusesEverything(), server
        ),
    )


async def test_a_method_without_a_permission_stops_the_start() -> None:
    partial = dict(list(TABLE.items())[:-1])
    with pytest.raises(UndeclaredPermission, match="ListCreditNotes"):
        await serve_grpc([invoices(partial)], authenticator=Tokens())


async def test_a_service_given_twice_stops_the_start() -> None:
    with pytest.raises(ValueError, match="given twice"):
        await serve_grpc([invoices(), invoices()], authenticator=Tokens())


async def test_the_server_checks_tokens_answers_refusals_health_and_reflection() -> None:
    server, port = await serve_grpc([invoices()], authenticator=Tokens())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = invoices_pb2_grpc.InvoiceServiceStub(channel)
            request = invoices_pb2.GetInvoiceRequest(invoice_id="x")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetInvoice(request)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetInvoice(request, metadata=[("authorization", f"Bearer {TOKEN}")])
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == "no invoice x"

            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", NAME):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            (listed,) = [response async for response in call]
            names = {s.name for s in listed.list_services_response.service}
            assert NAME in names and "grpc.health.v1.Health" in names
    finally:
        await server.stop(grace=None)
