"""The ops CLI's client of the REST API: it sends the CLI's token for its server."""

from __future__ import annotations

import os
from typing import Any

import httpx

from ispbill_app import credentials

DEFAULT_SERVER = "http://127.0.0.1:8080"
#: A bearer token for the server (wins over a stored login).
TOKEN_ENV = "ISPBILL_TOKEN"  # noqa: S105 - the name of a variable


class ApiError(Exception):
    def __init__(self, status: int, detail: str, title: str | None = None) -> None:
        self.status = status
        self.detail = detail
        #: the problem+json title (RFC 9457), e.g. "TotpRequired"
        self.title = title
        super().__init__(f"HTTP {status}: {detail}")


class ApiClient:
    def __init__(
        self, server: str | None = None, *, timeout: float = 60.0, token: str | None = None
    ) -> None:
        self.server = self.resolve(server)
        token = token if token is not None else credentials.token_for(self.server)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.server, timeout=timeout, headers=headers)

    @staticmethod
    def resolve(server: str | None) -> str:
        """The base URL used: the one given, else ISPBILL_SERVER, else the local default."""
        return (server or os.environ.get("ISPBILL_SERVER") or DEFAULT_SERVER).rstrip("/")

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        title = None
        try:
            body = response.json()
            detail = body.get("detail") if isinstance(body, dict) else body
            title = body.get("title") if isinstance(body, dict) else None
        except ValueError:
            detail = response.text
        if isinstance(detail, list):
            # FastAPI's request validation: one entry per problem, located in the body.
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                if isinstance(e, dict)
                else str(e)
                for e in detail
            )
        if detail is None:
            detail = title or response.reason_phrase
        raise ApiError(response.status_code, str(detail), title)

    def get(self, path: str, *, wait: float | None = None, **params: Any) -> Any:
        """`wait`: seconds to wait for this answer instead of the client's timeout (a
        replay of the whole ledger takes minutes)."""
        clean = {k: v for k, v in params.items() if v is not None}
        timeout = httpx.USE_CLIENT_DEFAULT if wait is None else wait
        return self._check(self._http.get(path, params=clean, timeout=timeout)).json()

    def get_bytes(self, path: str) -> bytes:
        return self._check(self._http.get(path)).content

    def post(self, path: str, body: Any, *, wait: float | None = None, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        timeout = httpx.USE_CLIENT_DEFAULT if wait is None else wait
        return self._check(self._http.post(path, json=body, params=clean, timeout=timeout)).json()

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self._http.patch(path, json=body)).json()

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self._http.put(path, json=body)).json()

    def delete(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self._check(self._http.delete(path, params=clean)).json()

    def close(self) -> None:
        self._http.close()


def log_in(
    server: str,
    username: str,
    password: str,
    *,
    totp: str | None = None,
    name: str = "cli",
    expires_in_days: int = 30,
    timeout: float = 30.0,
) -> str:
    """A new token from POST /api/v1/auth/token; ApiError (401) on wrong credentials, with
    detail "TotpRequired"'s message when a TOTP code is needed."""
    client = ApiClient(server, token=None, timeout=timeout)
    try:
        body = {
            "username": username,
            "password": password,
            "totp": totp,
            "name": name,
            "expires_in_days": expires_in_days,
        }
        issued = client.post("/api/v1/auth/token", body)
    finally:
        client.close()
    return str(issued["token"])
