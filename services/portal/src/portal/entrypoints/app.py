"""The HTTP application shell: routers from each service, errors as problem details, health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ispbill_core.access import Authenticator, Forbidden, Unauthenticated
from ispbill_core.web import OPEN, check_routes_declare_permissions, public, use_authenticator

HealthCheck = Callable[[], Awaitable[bool]]


def create_app(
    routers: Iterable[APIRouter],
    *,
    error_statuses: Mapping[type[Exception], int],
    authenticator: Authenticator,
    health_checks: Mapping[str, HealthCheck] | None = None,
    title: str = "ispbill",
    version: str = "0.1.0",
) -> FastAPI:
    """Domain errors map to 4xx problem details (RFC 9457); anything else is a 500.

    Every route must declare its permission (ispbill_core.web.requires, or public()): an app
    with a route that does not is refused here, before it serves anything. `authenticator`
    turns each request's bearer token into its principal.
    """
    app = FastAPI(title=title, version=version, openapi_url="/openapi.json", docs_url="/docs")
    use_authenticator(app, authenticator)
    for router in routers:
        app.include_router(router)

    def problem(status: int, title: str, detail: str) -> JSONResponse:
        return JSONResponse(
            {"type": "about:blank", "title": title, "status": status, "detail": detail},
            status_code=status,
            media_type="application/problem+json",
        )

    for exc_type, status in error_statuses.items():

        def handler(_: Request, exc: Exception, status: int = status) -> JSONResponse:
            return problem(status, type(exc).__name__, str(exc))

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(_: Request, exc: Unauthenticated) -> JSONResponse:
        # the title names the case: Unauthenticated, InvalidCredentials, TotpRequired, ...
        response = problem(401, type(exc).__name__, str(exc))
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(Forbidden)
    async def forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, type(exc).__name__, str(exc))

    @app.exception_handler(ValidationError)
    async def invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return problem(422, "ValidationError", str(exc))

    checks = dict(health_checks or {})

    @app.get("/healthz", tags=["health"], dependencies=[public()])
    async def healthz() -> JSONResponse:
        results = {name: await check() for name, check in checks.items()}
        ok = all(results.values())
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "checks": results},
            status_code=200 if ok else 503,
        )

    permissions = check_routes_declare_permissions(app.routes)
    _document_access(app, permissions)
    return app


_PROBLEM = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def _document_access(app: FastAPI, permissions: Mapping[tuple[str, str], str]) -> None:
    """The OpenAPI document states each operation's permission (`x-permission`) and its 401
    and 403 answers, so that a client (and schemathesis) knows them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM
        problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                permission = permissions.get((method.upper(), path))
                if permission is None or permission == OPEN:
                    continue
                operation["x-permission"] = permission
                responses = operation.setdefault("responses", {})
                responses.setdefault(
                    "401",
                    {
                        "description": "no token, or an unknown, expired or revoked one, or a"
                        " disabled user's",
                        "content": problem,
                    },
                )
                responses.setdefault(
                    "403",
                    {
                        "description": f"the token lacks the permission {permission!r}",
                        "content": problem,
                    },
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
