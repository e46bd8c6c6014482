"""`ispbill`: run the all-in-one or one distributed component, and operate a running server."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import httpx
import typer

from ispbill_app.client import ApiError
from ispbill_app.commands import (
    bill_run,
    collector,
    customers,
    dead_letters,
    demo,
    imports,
    invoices,
    login,
    nas,
    operations,
    payments,
    plans,
    reports,
    runtime,
    secrets,
    staff,
    subscriptions,
    usage,
)
from ispbill_app.commands.state import CliState
from ispbill_app.credentials import CredentialsError

COMPONENTS = runtime.COMPONENTS

app = typer.Typer(
    name="ispbill",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option(
            help="REST API of a running ispbill (env ISPBILL_SERVER; default http://127.0.0.1:8080)"
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    cli_state = ctx.ensure_object(CliState)
    cli_state.server, cli_state.verbose = server, verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


runtime.register(app)
demo.register(app)
app.add_typer(secrets.app, name="secrets")
app.add_typer(nas.app, name="nas")
app.add_typer(usage.app, name="usage")
app.add_typer(collector.app, name="collector")
bill_run.register(app)
app.add_typer(invoices.app, name="invoices")
app.add_typer(payments.app, name="payments")
app.add_typer(imports.app, name="import")
login.register(app)
app.add_typer(customers.app, name="customers")
app.add_typer(plans.app, name="plans")
app.add_typer(subscriptions.app, name="subscriptions")
app.add_typer(staff.app, name="staff")
app.add_typer(operations.projections, name="projections")
app.add_typer(operations.parked, name="parked")
app.add_typer(dead_letters.app, name="dead-letters")
app.add_typer(operations.audit, name="audit")
app.add_typer(reports.app, name="reports")


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code: 0 done, 1 refused (the server's reason on stderr),
    2 bad usage or the server not reachable, 130 interrupted."""
    command = typer.main.get_command(app)
    cli_state = CliState()
    try:
        code = command.main(
            args=sys.argv[1:] if argv is None else argv,
            prog_name="ispbill",
            standalone_mode=False,
            obj=cli_state,
        )
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("ispbill: interrupted", file=sys.stderr)
        return 130
    except ApiError as exc:
        hint = "; log in with `ispbill login`" if exc.status == 401 else ""
        print(f"ispbill: {exc.detail} (HTTP {exc.status}){hint}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"ispbill: cannot reach {cli_state.server_url}: {exc}", file=sys.stderr)
        return 2
    except typer.TyperException as exc:  # bad usage: says what and shows the usage line
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            print(f"ispbill: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except CredentialsError as exc:
        print(f"ispbill: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ispbill: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        return exc.code or 0
    finally:
        cli_state.close()
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
