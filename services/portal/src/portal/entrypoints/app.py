"""The HTTP application shell: routers from each service, errors as problem details, health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ispbill_core.access import Authenticator, Forbidden, Unauthenticated
from ispbill_core.web import check_routes_declare_permissions, public, use_authenticator

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

    check_routes_declare_permissions(app.routes)
    return app
