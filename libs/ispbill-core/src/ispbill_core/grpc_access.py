"""Permissions on gRPC methods: a server interceptor with one permission per method.

Every method the server answers must be in the table (a permission, or OPEN for health checks
and reflection); a method that is not is refused with PERMISSION_DENIED, and
`check_methods_declared` stops a server from starting with a service method left out. Callers
send `authorization: Bearer <token>` in the call metadata (ispbill_core.access.bearer_metadata);
no token or a bad one is UNAUTHENTICATED, a token without the permission PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from ispbill_core.access import Authenticator, Forbidden, Unauthenticated, check_permissions
from ispbill_core.web import OPEN, UndeclaredPermission

#: Method-name prefixes of the infrastructure services that stay open.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def method_names(service: ServiceDescriptor) -> list[str]:
    """The full method paths of a service, as the interceptor sees them ("/pkg.Svc/Method")."""
    return [f"/{service.full_name}/{method.name}" for method in service.methods]


def check_methods_declared(table: Mapping[str, str], services: Iterable[ServiceDescriptor]) -> None:
    """Raise UndeclaredPermission when a method of `services` has no entry in `table`."""
    check_permissions(p for p in table.values() if p != OPEN)
    missing = [m for s in services for m in method_names(s) if m not in table]
    if missing:
        raise UndeclaredPermission(f"gRPC methods without a permission: {', '.join(missing)}")


def _token(metadata: Iterable[Any] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator, table: Mapping[str, str]) -> None:
        check_permissions(p for p in table.values() if p != OPEN)
        self._authenticator = authenticator
        self._table = dict(table)

    async def _check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        permission = self._table.get(method)
        if permission is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} declares no permission"
            )
            raise AssertionError("context.abort returned")
        token = _token(context.invocation_metadata())
        if token is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "this needs authorization: Bearer <token>"
            )
            raise AssertionError("context.abort returned")
        try:
            who = await self._authenticator.authenticate(token)
            who.require(permission)
        except Unauthenticated as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except Forbidden as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or self._table.get(method) == OPEN or method.startswith(OPEN_SERVICES):
            return handler
        check = self._check
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(method, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                await check(method, context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "client streaming calls are not served"
            )

        return grpc.unary_unary_rpc_method_handler(refuse)
