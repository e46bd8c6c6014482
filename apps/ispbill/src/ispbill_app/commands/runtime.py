"""`ispbill run` (every service in one process) and `ispbill serve COMPONENT` (one of them)."""

from __future__ import annotations

import asyncio
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

COMPONENTS = ("collector", "rating", "api", "invoicing", "notifier")

Component = Enum("Component", {name: name for name in COMPONENTS}, type=str)  # type: ignore[misc]

DataDir = Annotated[
    Path | None, typer.Option(help="where the SQLite ledger and outbox live", show_default=False)
]
Host = Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")]
HttpPort = Annotated[int | None, typer.Option(help="REST API and dashboard (default 8080)")]
RadiusPort = Annotated[int | None, typer.Option(help="RADIUS accounting, UDP (default 1813)")]
GrpcPort = Annotated[int | None, typer.Option(help="gRPC invoices service (default 50051)")]
Ledger = Annotated[
    str | None,
    typer.Option(help="'sqlite' (default), a postgresql:// DSN, or an esdb:// / kurrentdb:// URI"),
]
Kafka = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers, host:port (distributed mode)")
]
SmtpHost = Annotated[
    str | None, typer.Option(help="SMTP relay; without it e-mails go to DATA_DIR/outbox")
]
SmtpPort = Annotated[int | None, typer.Option()]
Timezone = Annotated[
    str | None, typer.Option(help="IANA zone billing periods are cut in (default UTC)")
]


def settings_from(timezone: str | None = None, **given: Any) -> Any:
    """Settings from the environment, overridden by the flags given."""
    from zoneinfo import ZoneInfo

    from ispbill_app.settings import Settings

    overrides = {name: value for name, value in given.items() if value is not None}
    if timezone:
        overrides["timezone"] = ZoneInfo(timezone)
    return Settings(**overrides)


def _start(command: str, component: str | None, settings: Any, with_demo: bool) -> None:
    from invoicing.adapters.invoice_template import TemplateError
    from invoicing.adapters.pdf import default_template
    from ispbill_app import bootstrap
    from ispbill_core import gc_tuning
    from ispbill_core.sealing import SealingError
    from ispbill_core.telemetry import TelemetryError

    try:
        thresholds = gc_tuning.parse_thresholds(settings.gc_thresholds)
        # A bad invoice template or billing setting stops the start, not a bill run at night.
        default_template()
        bootstrap.billing_settings(settings)
    except (ValueError, TemplateError) as exc:
        print(f"ispbill: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    # After the imports above and before the loop: a server's heap is mostly what it keeps.
    gc_tuning.tune(thresholds)
    try:
        if command == "run":
            asyncio.run(bootstrap.run_embedded(settings, with_demo=with_demo))
        else:
            assert component is not None
            asyncio.run(bootstrap.run_component(component, settings))
    except KeyboardInterrupt:
        pass
    except (SealingError, TelemetryError) as exc:
        print(f"ispbill: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        data_dir: DataDir = None,
        host: Host = None,
        http_port: HttpPort = None,
        radius_acct_port: RadiusPort = None,
        grpc_port: GrpcPort = None,
        ledger: Ledger = None,
        kafka: Kafka = None,
        smtp_host: SmtpHost = None,
        smtp_port: SmtpPort = None,
        timezone: Timezone = None,
        with_demo: Annotated[
            bool, typer.Option("--with-demo", help="load the demo ISP once started")
        ] = False,
    ) -> None:
        """All services in one process, SQLite ledger, no broker."""
        settings = settings_from(**{k: v for k, v in locals().items() if k != "with_demo"})
        _start("run", None, settings, with_demo)

    @app.command("serve")
    def serve(
        component: Annotated[Component, typer.Argument(help="the component to run")],
        data_dir: DataDir = None,
        host: Host = None,
        http_port: HttpPort = None,
        radius_acct_port: RadiusPort = None,
        grpc_port: GrpcPort = None,
        ledger: Ledger = None,
        kafka: Kafka = None,
        smtp_host: SmtpHost = None,
        smtp_port: SmtpPort = None,
        timezone: Timezone = None,
    ) -> None:
        """One component of the distributed runtime."""
        given = {k: v for k, v in locals().items() if k != "component"}
        _start("serve", component.value, settings_from(**given), False)
