"""One gRPC server for the services of a process: access checks, health checks, reflection.

A service describes what it serves as a `GrpcService` (its descriptor, the permission of each
method, how to add its servicer); the composition root passes every one it runs to
`serve_grpc`, so no service imports another to share a port. Every method's permission is
enforced by ispbill_core.grpc_access; health checks (grpc.health.v1) and server reflection
(grpc.reflection.v1alpha, what grpcurl and Postman use) are open.

Handlers refuse bad input with `Refused` (a status code and a message): `answers_refusals`
turns it into the call's status, so bad input is never an INTERNAL error.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ispbill_core.access import Authenticator
from ispbill_core.grpc_access import AccessInterceptor, check_methods_declared


@dataclass(frozen=True)
class GrpcService:
    """A service to serve: its descriptor, one permission per method, and its registration."""

    descriptor: ServiceDescriptor
    #: "/pkg.Service/Method" -> permission; every method of `descriptor` must be there
    permissions: Mapping[str, str]
    #: adds the servicer to a server (the generated add_<Service>Servicer_to_server)
    register: Callable[[grpc.aio.Server], None]

    @property
    def name(self) -> str:
        return str(self.descriptor.full_name)


async def serve_grpc(
    services: Sequence[GrpcService],
    *,
    authenticator: Authenticator,
    host: str = "127.0.0.1",
    port: int = 0,
) -> tuple[grpc.aio.Server, int]:
    """Start `services` on host:port with health checks and reflection; returns the server and
    the bound port (port 0 asks the OS for a free one). Stop with ``await server.stop(grace)``.

    A method without a permission, or two services of one name, stop the start.
    """
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ValueError(f"a gRPC service is given twice: {', '.join(names)}")
    table: dict[str, str] = {}
    for service in services:
        check_methods_declared(service.permissions, [service.descriptor])
        table.update(service.permissions)
    server = grpc.aio.server(interceptors=[AccessInterceptor(authenticator, table)])
    for service in services:
        service.register(server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (health.OVERALL_HEALTH, *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:  # older grpcio reports a failed bind as port 0 instead of raising
        raise RuntimeError(f"could not bind the gRPC server to {address}")
    await server.start()
    return server, bound


class Refused(Exception):
    """A request a handler answers with a status code instead of a response."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self_ = TypeVar("Self_")
_Handler = Callable[[Self_, Req, Any], Awaitable[Resp]]


def answers_refusals(handler: _Handler[Self_, Req, Resp]) -> _Handler[Self_, Req, Resp]:
    """Turn a Refused raised by a servicer method into the matching gRPC status."""

    @functools.wraps(handler)
    async def wrapped(self: Self_, request: Req, context: Any) -> Resp:
        try:
            return await handler(self, request, context)
        except Refused as refused:
            await context.abort(refused.code, refused.details)
            raise AssertionError("context.abort returned") from None

    return wrapped
