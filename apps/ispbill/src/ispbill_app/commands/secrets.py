"""`ispbill secrets`: the key that seals NAS secrets in the ledger."""

from __future__ import annotations

import typer

from ispbill_app.commands import runtime
from ispbill_app.commands.output import fail

app = typer.Typer(help="the key that seals NAS secrets in the ledger", no_args_is_help=True)


@app.command("new-key")
def new_key() -> None:
    """Print a new random key (for ISPBILL_SECRETS_KEY)."""
    from ispbill_core.sealing import new_key as make_key

    print(make_key())


@app.command("check")
def check(
    data_dir: runtime.DataDir = None,
    host: runtime.Host = None,
    http_port: runtime.HttpPort = None,
    radius_acct_port: runtime.RadiusPort = None,
    grpc_port: runtime.GrpcPort = None,
    ledger: runtime.Ledger = None,
    kafka: runtime.Kafka = None,
    smtp_host: runtime.SmtpHost = None,
    smtp_port: runtime.SmtpPort = None,
    timezone: runtime.Timezone = None,
) -> None:
    """Load the keyring as a server would and print its key ids."""
    given = dict(locals())
    from ispbill_core.sealing import SealingError

    try:
        keyring = runtime.settings_from(**given).keyring(create=False)
    except SealingError as exc:
        raise fail(str(exc), 2) from None
    print(f"seals with key {keyring.sealing_key_id}; opens {', '.join(keyring.key_ids)}")
