"""Permissions on REST routes: every route declares one, and an app refuses to build otherwise.

A route takes the principal as a parameter (`who: Principal = requires(CUSTOMERS_WRITE)`) or in
its decorator's `dependencies=[requires(...)]`; a route anyone may call says so with `public()`.
`check_routes_declare_permissions` (called by the app shell at build) raises for any route that
does neither, so a forgotten check stops the start instead of opening a route.

The dependency reads `Authorization: Bearer <token>` and asks the app's Authenticator
(`app.state.authenticator`) who it is, on every request (no cache: a disabled user's or a revoked
token's next request fails). No credentials, or bad ones: 401; a permission the token lacks: 403.
Both are checked before the body or the path is validated, so a stranger learns nothing from a
422, and a role without the permission gets 403 whether the id it names exists or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ispbill_core.access import Authenticator, Principal, Unauthenticated, check_permissions

#: What `public()` declares: no credentials needed.
OPEN = "open"
_MARK = "__ispbill_permission__"

_bearer = HTTPBearer(
    auto_error=False,
    description="A staff API token: POST /api/v1/auth/token, or GET/POST /api/v1/tokens",
)


class UndeclaredPermission(RuntimeError):
    """A route or gRPC method that declares no permission: the app refuses to start."""


def use_authenticator(app: FastAPI, authenticator: Authenticator) -> None:
    app.state.authenticator = authenticator


async def authenticate_request(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("this needs a bearer token (Authorization: Bearer <token>)")
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    if authenticator is None:  # a wiring bug, not the caller's fault
        raise RuntimeError("the app has no authenticator (ispbill_core.web.use_authenticator)")
    return await authenticator.authenticate(credentials.credentials)


def requires(permission: str) -> Any:
    """A dependency that gives the principal when it holds `permission` (401 / 403 otherwise)."""
    check_permissions([permission])

    async def principal(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        who = await authenticate_request(request, credentials)
        who.require(permission)
        request.state.principal = who
        return who

    setattr(principal, _MARK, permission)
    principal.__name__ = f"requires_{permission.replace(':', '_').replace('-', '_')}"
    return Depends(principal)


def _open() -> None:
    return None


setattr(_open, _MARK, OPEN)


def public() -> Any:
    """Declares a route that needs no credentials (health, logging in)."""
    return Depends(_open)


def declared_permissions(dependant: Dependant) -> set[str]:
    """Every permission the route's dependencies declare (OPEN for a public one)."""
    found: set[str] = set()
    pending: list[Dependant] = [dependant]
    while pending:
        current = pending.pop()
        mark = getattr(current.call, _MARK, None)
        if isinstance(mark, str):
            found.add(mark)
        pending.extend(current.dependencies)
    return found


@dataclass(frozen=True)
class ApiRoute:
    """An API route as the app serves it: its full path, and its dependencies as included
    (a router's own dependencies count)."""

    path: str
    methods: frozenset[str]
    dependant: Dependant
    endpoint: Any


def api_routes(routes: Iterable[Any]) -> Iterator[ApiRoute]:
    """Every API route of an app (`app.routes`), through included routers."""
    from fastapi import routing

    iterate = getattr(routing, "iter_route_contexts", None)
    if iterate is None:  # FastAPI before lazily included routers: app.routes is flat
        contexts: Iterable[Any] = [r for r in routes if isinstance(r, APIRoute)]
    else:
        contexts = (c for c in iterate(list(routes)) if isinstance(c.original_route, APIRoute))
    for route in contexts:
        yield ApiRoute(
            path=str(route.path),
            methods=frozenset(route.methods or ()),
            dependant=route.dependant,
            endpoint=route.endpoint,
        )


def route_permission(route: ApiRoute) -> str:
    """The one permission a route declares (OPEN for a public route), or UndeclaredPermission."""
    declared = declared_permissions(route.dependant)
    where = f"{','.join(sorted(route.methods))} {route.path}"
    if not declared:
        raise UndeclaredPermission(
            f"{where} declares no permission: give it requires(<permission>) or public()"
        )
    if len(declared) > 1:
        raise UndeclaredPermission(f"{where} declares several permissions: {sorted(declared)}")
    return declared.pop()


def check_routes_declare_permissions(routes: Iterable[Any]) -> dict[tuple[str, str], str]:
    """Every API route's permission by (method, path); raises for a route without one.

    Starlette's own routes (the OpenAPI document and its UI) are not API routes and stay open.
    """
    table: dict[tuple[str, str], str] = {}
    for route in api_routes(routes):
        permission = route_permission(route)
        for method in route.methods:
            table[(method, route.path)] = permission
    return table


def problem_responses(answers: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for the problems it answers beyond those the app shell states for
    every operation (400 body, 404 named record, 409 write conflict, 401, 403, 413, 422): each
    an RFC 9457 problem document."""
    content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {status: {"description": text, "content": content} for status, text in answers.items()}
