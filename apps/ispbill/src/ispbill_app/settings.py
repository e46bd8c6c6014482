"""Settings of a running ispbill: command-line flags over ISPBILL_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from ispbill_app.http_server import HttpTimeouts
from ispbill_core.sealing import Keyring


def env(name: str, default: str) -> str:
    return os.environ.get(f"ISPBILL_{name}", default)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(env("DATA_DIR", "var/ispbill")))
    host: str = field(default_factory=lambda: env("HOST", "127.0.0.1"))
    http_port: int = field(default_factory=lambda: int(env("HTTP_PORT", "8080")))
    radius_acct_port: int = field(default_factory=lambda: int(env("RADIUS_ACCT_PORT", "1813")))
    grpc_port: int = field(default_factory=lambda: int(env("GRPC_PORT", "50051")))
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo(env("TIMEZONE", "UTC")))
    #: "sqlite" (in data_dir), or a postgresql:// DSN
    ledger: str = field(default_factory=lambda: env("LEDGER", "sqlite"))
    ledger_schema: str = field(default_factory=lambda: env("LEDGER_SCHEMA", "ispbill"))
    #: where projections live beside a KurrentDB ledger (a postgresql:// DSN); with a SQLite or
    #: PostgreSQL ledger they live in the ledger's own database and this is not needed
    read_models: str = field(default_factory=lambda: env("READ_MODELS", ""))
    kafka: str = field(default_factory=lambda: env("KAFKA", ""))
    #: partitions of the accounting topic when ispbill creates it (rating's parallelism)
    kafka_partitions: int = field(default_factory=lambda: int(env("KAFKA_PARTITIONS", "3")))
    #: seconds the collector waits for Kafka to acknowledge a batch before spooling it to disk
    publish_timeout: float = field(default_factory=lambda: float(env("PUBLISH_TIMEOUT", "2")))
    #: where the collector spools batches while Kafka is unreachable; "" is <data_dir>/spool
    spool_dir_setting: str = field(default_factory=lambda: env("SPOOL_DIR", ""))
    #: refuse (do not acknowledge) batches once the spool holds this many bytes; 0: no limit
    spool_max_bytes: int = field(default_factory=lambda: int(env("SPOOL_MAX_BYTES", "0")))
    smtp_host: str = field(default_factory=lambda: env("SMTP_HOST", ""))
    smtp_port: int = field(default_factory=lambda: int(env("SMTP_PORT", "25")))
    smtp_username: str = field(default_factory=lambda: env("SMTP_USERNAME", ""))
    smtp_password: str = field(default_factory=lambda: env("SMTP_PASSWORD", ""), repr=False)
    #: "starttls" upgrades a plain connection, "tls" connects with TLS (port 465), "" neither
    smtp_security: str = field(default_factory=lambda: env("SMTP_SECURITY", ""))
    mail_from: str = field(default_factory=lambda: env("MAIL_FROM", "billing@isp.example"))
    isp_name: str = field(default_factory=lambda: env("ISP_NAME", "Demo ISP"))
    isp_address: str = field(
        default_factory=lambda: env("ISP_ADDRESS", "1 Fiber Street, Metro City")
    )
    isp_tax_id: str = field(default_factory=lambda: env("ISP_TAX_ID", "VAT-000000"))
    invoice_series: str = field(default_factory=lambda: env("INVOICE_SERIES", "INV"))
    credit_note_series: str = field(default_factory=lambda: env("CREDIT_NOTE_SERIES", "CN"))
    number_format: str = field(default_factory=lambda: env("NUMBER_FORMAT", "{series}-{seq:06d}"))
    payment_terms_days: int = field(default_factory=lambda: int(env("PAYMENT_TERMS_DAYS", "14")))
    tax_rounding: str = field(default_factory=lambda: env("TAX_ROUNDING", "per_invoice"))
    #: how many earlier periods a bill run looks back for usage rated after their invoice
    #: (billed as adjustment lines, ADR 0032)
    late_usage_periods: int = field(default_factory=lambda: int(env("LATE_USAGE_PERIODS", "3")))
    #: a period's scheduled bill run: this local time on the next period's first day; "off"
    bill_run_at: str = field(default_factory=lambda: env("BILL_RUN_AT", "02:00"))
    #: a TOML or JSON file of routers whose byte counters are polled (SNMP, RouterOS API)
    pollers: str = field(default_factory=lambda: env("POLLERS", ""))
    #: when set, only the process on this host name polls (one of several collector replicas)
    pollers_host: str = field(default_factory=lambda: env("POLLERS_HOST", ""))
    #: the usage discrepancy report flags a RADIUS/router difference above this percentage
    usage_discrepancy_pct: float = field(
        default_factory=lambda: float(env("USAGE_DISCREPANCY_PCT", "5"))
    )
    #: where the invoicing gRPC service is, for the notifier in distributed mode
    invoicing_grpc: str = field(default_factory=lambda: env("INVOICING_GRPC", ""))
    #: the API token a component sends when it calls another one (gRPC metadata
    #: `authorization: Bearer <token>`, ispbill_core.access.bearer_metadata); make one with
    #: POST /api/v1/tokens as a staff user whose role has what the calls need
    service_token: str = field(default_factory=lambda: env("SERVICE_TOKEN", ""), repr=False)

    #: seconds between the Interim-Updates the ISP's RADIUS server asks its NASes for
    #: (Acct-Interim-Interval in the Access-Accept; accounting records do not carry it)
    rating_interim_interval: float = field(
        default_factory=lambda: float(env("RATING_INTERIM_INTERVAL", "300"))
    )
    #: a session with no record for this many interim intervals is closed at its last totals
    #: (status silent-timeout); 0: never
    rating_silent_session_intervals: int = field(
        default_factory=lambda: int(env("RATING_SILENT_SESSION_INTERVALS", "3"))
    )
    #: the garbage collector's thresholds in a server process, "gen0,gen1,gen2", or "python"
    #: for CPython's own (ispbill_core.gc_tuning, ADR 0028)
    gc_thresholds: str = field(default_factory=lambda: env("GC_THRESHOLDS", "50000,20,100"))
    #: seconds between two looks for due timers (silent sessions and later deadlines)
    timer_poll_interval: float = field(
        default_factory=lambda: float(env("TIMER_POLL_INTERVAL", "1"))
    )

    #: largest request body, bytes (413 above it, before it is read)
    max_body_bytes: int = field(default_factory=lambda: int(env("MAX_BODY_BYTES", str(1 << 20))))
    #: largest body of POST /api/v1/collector/imports/radius-detail: up to 10,000 records a call
    max_import_body_bytes: int = field(
        default_factory=lambda: int(env("MAX_IMPORT_BODY_BYTES", str(64 << 20)))
    )
    #: seconds an HTTP connection may sit idle between requests
    http_keep_alive_timeout: float = field(
        default_factory=lambda: float(env("HTTP_KEEP_ALIVE_TIMEOUT", "5"))
    )
    #: seconds for a request's head (request line and headers) to arrive whole
    http_head_timeout: float = field(default_factory=lambda: float(env("HTTP_HEAD_TIMEOUT", "10")))
    #: seconds a request body may stall between two chunks (408 after)
    http_read_timeout: float = field(default_factory=lambda: float(env("HTTP_READ_TIMEOUT", "30")))

    @property
    def http_timeouts(self) -> HttpTimeouts:
        return HttpTimeouts(
            keep_alive=self.http_keep_alive_timeout,
            head=self.http_head_timeout,
            body=self.http_read_timeout,
        )

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.db"

    @property
    def default_key_file(self) -> Path | None:
        """With the SQLite ledger, its key file beside it; a PostgreSQL ledger is shared by
        several processes, which must all be given the same key, so it has none."""
        return self.data_dir / "secrets.key" if self.ledger == "sqlite" else None

    def keyring(self, *, create: bool = True) -> Keyring:
        """The key that seals and opens NAS secrets: ISPBILL_SECRETS_KEY or
        ISPBILL_SECRETS_KEY_FILE, else the default key file (made when `create` and missing).
        SealingError when there is none."""
        default = self.default_key_file
        return Keyring.from_env(default_file=default, create_default=create and default is not None)

    @property
    def spool_dir(self) -> Path:
        return Path(self.spool_dir_setting) if self.spool_dir_setting else self.data_dir / "spool"
