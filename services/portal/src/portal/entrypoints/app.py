"""The HTTP application shell: routers from each service, errors as problem details, health."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Scope

from ispbill_core.access import Authenticator, Forbidden, Unauthenticated
from ispbill_core.web import OPEN, check_routes_declare_permissions, public, use_authenticator
from portal.entrypoints.edge import (
    DEFAULT_BODY_READ_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    TITLES,
    BodyLimit,
    problem,
    shorten,
)

HealthCheck = Callable[[], Awaitable[bool]]
log = logging.getLogger(__name__)

#: Where `make install-web` (npm) puts Swagger UI: served at /docs/assets, never from a CDN.
SWAGGER_UI_DIR_DEFAULT = Path(__file__).resolve().parents[5] / "node_modules" / "swagger-ui-dist"


def swagger_ui_dir() -> Path | None:
    """ISPBILL_SWAGGER_UI_DIR, else the repository's node_modules/swagger-ui-dist; None when
    it is not installed (then /docs is off rather than loading the assets from elsewhere)."""
    configured = os.environ.get("ISPBILL_SWAGGER_UI_DIR")
    path = Path(configured) if configured else SWAGGER_UI_DIR_DEFAULT
    return path if (path / "swagger-ui-bundle.js").is_file() else None


#: An RFC 9457 problem document, as every error is answered (`errors` on a 422).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
    }


#: What any route may answer besides its own responses (stated in the OpenAPI document).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: _problem_response("the request body is over the limit"),
    422: _problem_response("the request is not valid"),
}


def _validation_errors(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors without the input they were about (it may be megabytes) and with
    each message cut short."""
    out = []
    for error in errors:
        out.append(
            {
                "loc": [shorten(str(part), 80) for part in error.get("loc", ())][:10],
                "msg": shorten(str(error.get("msg", "")), 300),
                "type": str(error.get("type", "")),
            }
        )
    return out[:50]


def create_app(
    routers: Iterable[APIRouter],
    *,
    error_statuses: Mapping[type[Exception], int],
    authenticator: Authenticator,
    health_checks: Mapping[str, HealthCheck] | None = None,
    title: str = "ispbill",
    version: str = "0.1.0",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_limits: Mapping[str, int] | None = None,
    body_read_timeout: float = DEFAULT_BODY_READ_TIMEOUT,
) -> FastAPI:
    """Domain errors map to 4xx problem details (RFC 9457); anything else is a 500.

    Every route must declare its permission (ispbill_core.web.requires, or public()): an app
    with a route that does not is refused here, before it serves anything. `authenticator`
    turns each request's bearer token into its principal.

    Every error is application/problem+json, FastAPI's own (422 validation, 404 unknown route,
    405) included, and none repeats more than a short cut of the input. A request body over
    `max_body_bytes` (or `body_limits[path]` for the paths named there) is refused with 413
    before it is read; one that trickles slower than `body_read_timeout` seconds a chunk, 408.
    """
    app = FastAPI(
        title=title,
        version=version,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=PROBLEM_RESPONSES,
    )
    use_authenticator(app, authenticator)
    for router in routers:
        app.include_router(router)

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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc.errors())
        detail = (
            "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
            or "the request is not valid"
        )
        return problem(422, "RequestValidationError", detail, errors=errors)

    @app.exception_handler(ValidationError)
    async def invalid(_: Request, exc: ValidationError) -> JSONResponse:
        errors = _validation_errors(exc.errors(include_input=False))
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem(422, "ValidationError", detail or "invalid", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return problem(
            exc.status_code,
            TITLES.get(exc.status_code, "HTTPError"),
            str(exc.detail),
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, "InternalError", "the server failed; the log has the details")

    assets = swagger_ui_dir()
    if assets is not None:
        app.mount("/docs/assets", StaticFiles(directory=assets), name="swagger-ui")

        @app.get("/docs", include_in_schema=False, dependencies=[public()])
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{title} API",
                swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                swagger_css_url="/docs/assets/swagger-ui.css",
                swagger_favicon_url="/docs/assets/favicon-32x32.png",
                # Swagger UI would otherwise send the document to an online validator.
                swagger_ui_parameters={"validatorUrl": None},
            )
    else:
        log.info("Swagger UI assets not installed (make install-web): /docs is off")

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
    app.add_middleware(
        BodyLimit,
        max_bytes=max_body_bytes,
        per_path=dict(body_limits or {}),
        read_timeout=body_read_timeout,
    )
    return app


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves on the request's path (the `Allow` of a 405)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)


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


_WRITES = {"post", "put", "patch", "delete"}


def _answers_of(method: str, operation: Mapping[str, Any]) -> dict[str, str]:
    """The problems an operation may answer by its shape, whatever service serves it: a body
    that is not JSON (400), a record it names by path or in its body that does not exist (404),
    a write that conflicts with what the ledger holds (409: exists already, changed since the
    version the client read, a concurrent append)."""
    has_body = "requestBody" in operation
    names_a_record = has_body or any(p.get("in") == "path" for p in operation.get("parameters", []))
    answers = {}
    if has_body:
        answers["400"] = "the body cannot be parsed (not JSON, not UTF-8)"
    if names_a_record:
        answers["404"] = "a record the request names does not exist"
    if method in _WRITES:
        answers["409"] = (
            "it conflicts with the ledger: the record exists already, or was changed since"
            " the version the request expects"
        )
    return answers


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
                responses = operation.setdefault("responses", {})
                for status, description in _answers_of(method, operation).items():
                    responses.setdefault(status, {"description": description, "content": problem})
                for status, answer in responses.items():
                    # an error a route states without a body type is a problem document too
                    if status[0] in "45" and not answer.get("content"):
                        answer["content"] = problem
                permission = permissions.get((method.upper(), path))
                if permission is None or permission == OPEN:
                    continue
                operation["x-permission"] = permission
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
