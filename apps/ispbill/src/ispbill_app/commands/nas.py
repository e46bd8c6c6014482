"""`ispbill nas`: the NASes allowed to send accounting."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ispbill_app.client import ApiError
from ispbill_app.commands.output import FormatOption, OutputFormat, print_data
from ispbill_app.commands.state import client

app = typer.Typer(help="the NASes allowed to send accounting", no_args_is_help=True)

NAS_COLUMNS = [
    ("NAS", "nas_id"),
    ("NAME", "name"),
    ("ADDRESS", "ip_address"),
    ("VENDOR", "vendor"),
    ("MSG-AUTH", "require_message_authenticator"),
    ("SECRET", "secret_storage"),
    ("KEY", "secret_key_id"),
]

Vendor = Annotated[str | None, typer.Option(help="mikrotik, cisco, juniper, ... (default generic)")]
RequireMessageAuthenticator = Annotated[
    bool | None,
    typer.Option(
        "--require-message-authenticator/--no-require-message-authenticator",
        help="drop its requests without a valid Message-Authenticator (BlastRADIUS); off"
        " by default when registering",
        show_default=False,
    ),
]
SecretFile = Annotated[
    Path | None,
    typer.Option(
        help="read the RADIUS shared secret from this file (first line) rather than from a"
        " prompt or standard input; never give a secret on the command line"
    ),
]


@app.command("list")
def list_nas(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Every NAS in service (never a secret)."""
    print_data(client(ctx).get("/api/v1/nas"), fmt, NAS_COLUMNS)


@app.command("register")
def register(
    ctx: typer.Context,
    nas_id: Annotated[str, typer.Argument()],
    name: Annotated[str, typer.Option()],
    address: Annotated[str, typer.Option(help="its source IP address")],
    vendor: Vendor = None,
    require_message_authenticator: RequireMessageAuthenticator = None,
    secret_file: SecretFile = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Register a NAS."""
    given = _given(name, address, vendor, require_message_authenticator)
    defaults: dict[str, Any] = {"vendor": "generic", "require_message_authenticator": False}
    body = {key: defaults.get(key) if value is None else value for key, value in given.items()}
    body["secret"] = read_secret(secret_file)
    print_data(client(ctx).post("/api/v1/nas", {"nas_id": nas_id, **body}), fmt, NAS_COLUMNS)


@app.command("change")
def change(
    ctx: typer.Context,
    nas_id: Annotated[str, typer.Argument()],
    name: Annotated[str | None, typer.Option()] = None,
    address: Annotated[str | None, typer.Option(help="its source IP address")] = None,
    vendor: Vendor = None,
    require_message_authenticator: RequireMessageAuthenticator = None,
    secret_file: SecretFile = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """New details for a NAS; what is not given stays as it is, but the secret."""
    api = client(ctx)
    # A change keeps what is not given; the secret is never read back, so it is asked.
    found = [n for n in api.get("/api/v1/nas") if n["nas_id"] == nas_id]
    if not found:
        raise ApiError(404, f"NAS {nas_id!r} is not registered")
    current = found[0]
    given = _given(name, address, vendor, require_message_authenticator)
    body = {key: current.get(key) if value is None else value for key, value in given.items()}
    body["secret"] = read_secret(secret_file)
    # A prompt can take minutes: a change someone else made meanwhile is refused (409),
    # not undone with the details read before it.
    body["expected_version"] = current["version"]
    print_data(api.put(f"/api/v1/nas/{nas_id}", body), fmt, NAS_COLUMNS)


@app.command("remove")
def remove(
    ctx: typer.Context,
    nas_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option()] = "",
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Take a NAS out of service."""
    removed = client(ctx).delete(f"/api/v1/nas/{nas_id}", reason=reason or None)
    print_data(removed, fmt, [("REMOVED", "nas_id"), ("REASON", "reason")])


def _given(
    name: str | None, address: str | None, vendor: str | None, require_ma: bool | None
) -> dict[str, Any]:
    return {
        "name": name,
        "ip_address": address,
        "vendor": vendor,
        "require_message_authenticator": require_ma,
    }


def read_secret(path: Path | None) -> str:
    """From a file, a prompt (a terminal), or the first line of standard input; never argv,
    which other users of the machine can read in the process list."""
    if path is not None:
        text = path.read_text(encoding="utf-8")
    elif sys.stdin.isatty():
        import getpass

        text = getpass.getpass("RADIUS shared secret: ")
    else:
        text = sys.stdin.readline()
    secret = text.splitlines()[0] if text else ""
    if not secret:
        raise SystemExit("ispbill: no RADIUS shared secret given")
    return secret
