"""`ispbill login` and `ispbill logout`: the CLI's API token for a server."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated

import typer

from ispbill_app import credentials
from ispbill_app.client import ApiClient, ApiError
from ispbill_app.commands.output import fail
from ispbill_app.commands.state import state

TOKEN_PATH = "/api/v1/auth/token"  # noqa: S105 - a route, not a token
TOTP_REQUIRED = "TotpRequired"

Server = Annotated[
    str | None,
    typer.Option(help="REST API to log in to (default: the global --server, ISPBILL_SERVER)"),
]


def _ask(prompt: str, *, secret: bool, from_stdin: bool) -> str:
    """A prompt on a terminal; with --password-stdin (scripts), the next line of stdin."""
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        value = line.rstrip("\r\n")
    elif secret:
        value = getpass.getpass(prompt)
    else:
        value = input(prompt)
    if not value:
        raise fail(f"no {prompt.strip().rstrip(':').lower()} given")
    return value


def register(app: typer.Typer) -> None:
    @app.command("login")
    def login(
        ctx: typer.Context,
        server: Server = None,
        username: Annotated[str | None, typer.Option(help="staff username (prompted)")] = None,
        password_stdin: Annotated[
            bool,
            typer.Option(
                "--password-stdin",
                help="read the password (and then a TOTP code, if asked) from standard input",
            ),
        ] = False,
        name: Annotated[str, typer.Option(help="what the token is called on the server")] = "cli",
        expires_in_days: Annotated[
            int, typer.Option(min=1, max=365, help="the token's lifetime")
        ] = 30,
    ) -> None:
        """Log in and keep an API token for this server.

        Asks the password (and a TOTP code when the account has one) and keeps the token in
        ~/.config/ispbill/credentials.json (0600; $ISPBILL_CONFIG_DIR moves it); ISPBILL_TOKEN,
        when set, is used instead."""
        url = ApiClient.resolve(server or state(ctx).server)
        if username is None:
            username = _ask("Username: ", secret=False, from_stdin=password_stdin)
        password = _ask("Password: ", secret=True, from_stdin=password_stdin)
        body = {
            "username": username,
            "password": password,
            "totp": None,
            "name": name,
            "expires_in_days": expires_in_days,
        }
        api = ApiClient(url, token="")  # a stale stored token must not go with the login
        try:
            try:
                issued = api.post(TOKEN_PATH, body)
            except ApiError as exc:
                if exc.status != 401 or exc.title != TOTP_REQUIRED:
                    raise
                body["totp"] = _ask("TOTP code: ", secret=True, from_stdin=password_stdin)
                issued = api.post(TOKEN_PATH, body)
        finally:
            api.close()
        where = credentials.store(url, issued["token"], issued["username"], issued["expires_at"])
        print(
            f"logged in to {url} as {issued['username']} ({issued['role']}); the token expires"
            f" {issued['expires_at']} and is kept in {where}"
        )
        if os.environ.get(credentials.TOKEN_ENV):
            print(
                f"note: {credentials.TOKEN_ENV} is set and is used instead of this token",
                file=sys.stderr,
            )

    @app.command("logout")
    def logout(ctx: typer.Context, server: Server = None) -> None:
        """Forget the token kept for this server.

        The token stays valid on the server until it expires or an admin revokes it."""
        url = ApiClient.resolve(server or state(ctx).server)
        if credentials.forget(url):
            print(f"logged out of {url}")
        else:
            print(f"no token kept for {url}")
        if os.environ.get(credentials.TOKEN_ENV):
            print(f"note: {credentials.TOKEN_ENV} is set and still used", file=sys.stderr)
