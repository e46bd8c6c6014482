"""`ispbill staff`: staff users written to the ledger directly (the first admin)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from ispbill_app.commands import runtime
from ispbill_app.commands.output import fail

app = typer.Typer(help="staff users (on the ledger directly)", no_args_is_help=True)


@app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(help="the admin's username (case-folded)")],
    password_file: Annotated[
        Path | None,
        typer.Option(
            help="read the password from this file (first line) rather than from a prompt or"
            " standard input; never give a password on the command line"
        ),
    ] = None,
    data_dir: runtime.DataDir = None,
    ledger: runtime.Ledger = None,
) -> None:
    """Create a staff user with the admin role on the ledger of --data-dir / --ledger (the
    first one; later ones through the API). Refused if the username exists."""
    from accounts.domain.errors import AccountsError

    settings = runtime.settings_from(data_dir=data_dir, ledger=ledger)
    password = read_password(password_file)

    async def create() -> None:
        from accounts.application.staff import create_staff_user
        from ispbill_app.bootstrap import open_ledger
        from ispbill_core.access import ADMIN, system_actor
        from ispbill_core.clock import SystemClock

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await open_ledger(settings)
        try:
            await create_staff_user(
                store, SystemClock(), username, ADMIN, password, system_actor("cli")
            )
        finally:
            await store.close()

    try:
        asyncio.run(create())
    except AccountsError as exc:
        raise fail(str(exc)) from None
    print(f"staff user {username.strip().casefold()!r} created with the role admin")


def read_password(path: Path | None) -> str:
    if path is not None:
        text = path.read_text(encoding="utf-8")
        password = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise fail("the passwords differ", 2)
    else:
        line = sys.stdin.readline()
        password = line.splitlines()[0] if line else ""
    if not password:
        raise fail("no password given", 2)
    return password
