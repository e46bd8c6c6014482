"""Composition root: wires adapters into the services, for the all-in-one and each component."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException

from accounts.application.read_models import AccountsQueries, accounts_projections
from accounts.application.staff import LedgerAuthenticator, LoginThrottle
from accounts.application.use_cases import nases_in_service
from accounts.domain.errors import (
    AddressInUse,
    AlreadyExists,
    Conflict,
    InvalidPlan,
    InvalidStaffCommand,
    NoTaxRule,
    NotFound,
    RuleViolated,
    TooManyAttempts,
    UsernameTaken,
)
from accounts.entrypoints.http import accounts_router
from accounts.entrypoints.imports_http import imports_router
from accounts.entrypoints.staff_http import staff_router
from invoicing.adapters.pdf import Branding, render_invoice_pdf
from invoicing.application.allocate_payment import allocate_payment
from invoicing.application.bill_run_schedule import BillRunSchedule
from invoicing.application.corrections import CreditNoteConflict
from invoicing.application.read_models import (
    BillingCatalogueProjection,
    CreditNotesProjection,
    InvoicesProjection,
    ProjectedCatalogue,
    ProjectedCreditNotes,
    ProjectedInvoiceQueries,
)
from invoicing.application.settings import BillingSettings
from invoicing.domain.errors import InvoicingError, InvoicingNotFound
from invoicing.domain.generator import TaxRounding
from invoicing.entrypoints.http import invoicing_router
from ispbill_app.http_server import HttpTimeouts, protocol_with
from ispbill_app.settings import Settings
from ispbill_core.access import COLLECTOR_READ
from ispbill_core.clock import Clock, SystemClock
from ispbill_core.contracts.accounts import (
    NasRegistered,
    RadiusUsernameChanged,
    SubscriptionStarted,
)
from ispbill_core.contracts.invoicing import InvoiceIssued
from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.contracts.usage_collector import AccountingRecordReceived, RouterCountersSampled
from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.files import private_directory
from ispbill_core.projections import Projection, ReadModelDatabase
from ispbill_core.projections.audit import AuditTrailProjection
from ispbill_core.projections.projector import FreshReads, Projector
from ispbill_core.projections.sqlite import SQLiteReadModels
from ispbill_core.sealing import Keyring, SealingError, sealed_with
from ispbill_core.subscriber import (
    BatchHandler,
    LedgerSubscriber,
    retry_parked_forever,
)
from ispbill_core.telemetry import setup_tracing
from ispbill_core.timers import Timers
from ispbill_core.timers.runner import TimerHandler, TimerRunner
from ispbill_core.timers.sqlite import SQLiteTimers
from ispbill_core.web import problem_responses, requires
from notifier.adapters.outbox import OutboxMailer
from notifier.adapters.smtp import SmtpMailer, SmtpSettings
from notifier.application.email_invoice import Mailer, SenderIdentity, email_invoice
from payments.application.read_models import PaymentQueries, PaymentsProjection
from payments.domain.errors import DuplicatePaymentReference, InvalidPayment
from payments.entrypoints.http import payments_router
from portal.entrypoints.app import create_app
from portal.entrypoints.operations import operations_router
from rating.application.rate_accounting_record import (
    RatingSettings,
    rate_unmatched_usage,
    rate_unmatched_usage_of_new_username,
)
from rating.application.rate_batch import RatingCache
from rating.application.rate_router_counters import rate_router_counters
from rating.application.read_models import rating_projections
from rating.application.session_read_models import SessionQueries
from rating.application.silent_sessions import Backlog, ledger_backlog
from rating.application.track_tariff import TARIFF_TYPES, TariffTracker
from rating.application.usage_discrepancies import UsageBySourceProjection
from rating.application.usage_read_models import UsageQueries
from rating.bootstrap import Rating
from rating.domain.silent_sessions import SilentSessionSettings
from rating.entrypoints.discrepancies_http import discrepancies_router
from rating.entrypoints.http import rating_router
from usage_collector.entrypoints.http import RADIUS_DETAIL_IMPORT_PATH

log = logging.getLogger("ispbill")

#: The Kafka rating worker's name for the records it parked before it had a dead-letter topic.
RATING_CONSUMER = "rating.kafka"
#: the rating workers' Kafka consumer group (the faust app's id)
RATING_GROUP = "ispbill-rating"
#: The embedded runtime's rating subscriber (its checkpoint name).
RATING_SUBSCRIBER = "rating"


async def key_ids_missing_from(store: Any, keyring: Keyring) -> set[str]:
    """Keys that sealed some NAS's current secret and are not in `keyring`."""
    nases = await nases_in_service(store)  # what does not decode is logged and skipped
    current = [nas.current for nas in nases.values()]
    used = {sealed_with(e.secret_sealed) for e in current if isinstance(e, NasRegistered)}
    return used - set(keyring.key_ids)


async def open_ledger(settings: Settings) -> Any:
    if settings.ledger == "sqlite":
        return SQLiteEventStore(settings.ledger_path)
    if settings.ledger.startswith(("postgresql://", "postgres://")):
        from ispbill_core.eventstore.postgresql import PostgresEventStore

        return await PostgresEventStore.connect(settings.ledger, schema=settings.ledger_schema)
    if settings.ledger.startswith(("esdb://", "esdb+discover://", "kurrentdb://", "kdb://")):
        from ispbill_core.eventstore.kurrentdb import KurrentDBEventStore

        return KurrentDBEventStore(settings.ledger)
    raise SystemExit(f"unknown ledger {settings.ledger!r}: use 'sqlite' or a postgresql:// DSN")


async def open_read_models(settings: Settings, store: Any) -> ReadModelDatabase:
    """Projections live in the ledger's own database: the SQLite file, the PostgreSQL schema;
    beside a KurrentDB ledger, in the PostgreSQL database ISPBILL_READ_MODELS names."""
    if isinstance(store, SQLiteEventStore):
        return SQLiteReadModels(store)
    from ispbill_core.projections.postgresql import PostgresReadModels

    dsn = settings.read_models or settings.ledger
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise SystemExit(
            "a KurrentDB ledger keeps its read models in PostgreSQL: set ISPBILL_READ_MODELS to"
            " a postgresql:// DSN"
        )
    return await PostgresReadModels.connect(dsn, schema=settings.ledger_schema)


async def open_timers(settings: Settings, store: Any) -> Timers:
    """Timers live where the projections do: in the ledger's own database (the SQLite file, the
    PostgreSQL schema), beside a KurrentDB ledger in the PostgreSQL database ISPBILL_READ_MODELS
    names."""
    if isinstance(store, SQLiteEventStore):
        return SQLiteTimers(store)
    from ispbill_core.timers.postgresql import PostgresTimers

    dsn = settings.read_models or settings.ledger
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise SystemExit(
            "a KurrentDB ledger keeps its timers in PostgreSQL: set ISPBILL_READ_MODELS to"
            " a postgresql:// DSN"
        )
    return await PostgresTimers.connect(dsn, schema=settings.ledger_schema)


def silent_session_settings(settings: Settings) -> SilentSessionSettings:
    return SilentSessionSettings(
        interim_interval=timedelta(seconds=settings.rating_interim_interval),
        intervals=settings.rating_silent_session_intervals,
    )


def all_projections(settings: Settings) -> list[Projection]:
    """Every service's projections (each service declares its own)."""
    return [
        *accounts_projections(),
        InvoicesProjection(),
        CreditNotesProjection(),
        BillingCatalogueProjection(),
        PaymentsProjection(),
        *rating_projections(settings.timezone),
        UsageBySourceProjection(),
        AuditTrailProjection(),
    ]


def billing_settings(settings: Settings) -> BillingSettings:
    return BillingSettings(
        timezone=settings.timezone,
        series=settings.invoice_series,
        credit_note_series=settings.credit_note_series,
        number_format=settings.number_format,
        payment_terms_days=settings.payment_terms_days,
        tax_rounding=TaxRounding(settings.tax_rounding),
        late_usage_periods=settings.late_usage_periods,
        bill_run_at=bill_run_time(settings.bill_run_at),
    )


def bill_run_time(text: str) -> time | None:
    """ISPBILL_BILL_RUN_AT: "HH:MM" (the ISP's time zone), or "off"."""
    if text.strip().lower() == "off":
        return None
    try:
        at = time.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"ISPBILL_BILL_RUN_AT={text!r}: a time of day such as 02:00, or off"
        ) from None
    if at.tzinfo is not None:
        raise ValueError(f"ISPBILL_BILL_RUN_AT={text!r}: no offset; the ISP's time zone applies")
    return at


def bill_run_schedule(services: Services) -> BillRunSchedule:
    """The scheduled bill runs of this process: its timers, the catalogue projection."""
    return BillRunSchedule(
        services.store,
        services.require_timers(),
        services.clock,
        billing_settings(services.settings),
        ProjectedCatalogue(services.reads),
    )


def branding(settings: Settings) -> Branding:
    return Branding(
        isp_name=settings.isp_name,
        address=settings.isp_address,
        tax_id=settings.isp_tax_id,
        email=settings.mail_from,
    )


@dataclass
class Services:
    """The wired services of one process."""

    settings: Settings
    store: Any
    clock: Clock = field(default_factory=SystemClock)
    collector_counters: Callable[[], dict[str, int]] | None = None
    collector_drops: Callable[[], dict[str, dict[str, Any]]] | None = None
    poller_counters: Callable[[], dict[str, dict[str, int]]] | None = None
    #: POST /api/v1/collector/imports/radius-detail, in a process that runs the collector.
    collector_imports: APIRouter | None = None
    #: seals and opens NAS secrets; loaded by the processes that need it (accounts API, collector)
    keyring: Keyring | None = None

    #: the default key file was made by this process (it did not exist when it started)
    made_key_file: bool = False
    #: projections, their checkpoints and parked events (the ledger's own database)
    read_models: ReadModelDatabase | None = None
    #: keeps this process's projections up to date, when it serves reads
    projector: Projector | None = None
    #: durable deadlines (the ledger's own database), when this process schedules or fires them
    timers: Timers | None = None

    async def open_timers(self) -> Timers:
        if self.timers is None:
            self.timers = await open_timers(self.settings, self.store)
        return self.timers

    def rating(self, *, backlog: Backlog | None = None) -> Rating:
        """Rating, moving its sessions' silence deadlines when this process has timers open."""
        return Rating(
            self.store,
            RatingSettings(timezone=self.settings.timezone),
            silent_session_settings(self.settings),
            self.timers,
            backlog,
        )

    def embedded_rating(self) -> Rating:
        """Rating in the embedded runtime: records rated from the ledger by the `rating`
        subscriber, whose backlog holds silence deadlines back."""
        return self.rating(backlog=ledger_backlog(self.store, self.store, RATING_SUBSCRIBER))

    def require_timers(self) -> Timers:
        if self.timers is None:
            raise RuntimeError("timers not opened: await services.open_timers()")
        return self.timers

    def timer_runner(self, handlers: Mapping[str, TimerHandler]) -> TimerRunner:
        """Fires the due timers of `handlers`' kinds; what fails for good is parked."""
        return TimerRunner(
            self.require_timers(),
            handlers,
            self.clock,
            parking=self.read_models,
            poll_interval=self.settings.timer_poll_interval,
        )

    async def open_read_models(self, *, run_projections: bool) -> None:
        self.read_models = await open_read_models(self.settings, self.store)
        if run_projections:
            self.projector = Projector(self.store, self.read_models, all_projections(self.settings))

    def require_read_models(self) -> ReadModelDatabase:
        if self.read_models is None:
            raise RuntimeError("read models not opened: await services.open_read_models()")
        return self.read_models

    @property
    def reads(self) -> ReadModelDatabase:
        """What the API reads: the read models, fresh up to the ledger's head when this
        process runs the projections (read-your-writes)."""
        db = self.require_read_models()
        return db if self.projector is None else FreshReads(db, self.projector)

    #: failed logins per username, in this process
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)

    @property
    def authenticator(self) -> LedgerAuthenticator:
        """Bearer tokens checked against the ledger on every request (no cache)."""
        return LedgerAuthenticator(self.store, self.clock)

    def require_keyring(self) -> Keyring:
        if self.keyring is None:
            default = self.settings.default_key_file
            missing = default is not None and not default.exists()
            self.keyring = self.settings.keyring()
            self.made_key_file = missing and default is not None and default.exists()
        return self.keyring

    async def check_keyring_opens_the_ledger(self) -> None:
        """Every NAS's current secret is sealed with a key of the keyring, or this says so.

        A key file made just now, beside a ledger whose NAS secrets were sealed with another
        key, means the old one was lost or not put back (a restore without it): the new file is
        removed again and the process stops, rather than start with every NAS left out.
        """
        keyring = self.require_keyring()
        missing = await key_ids_missing_from(self.store, keyring)
        if not missing:
            return
        default = self.settings.default_key_file
        if self.made_key_file and default is not None:
            default.unlink(missing_ok=True)
            self.made_key_file = False
            raise SealingError(
                f"{default} did not exist, but NAS secrets in the ledger are sealed with key(s)"
                f" {', '.join(sorted(missing))}: put the key file back from its backup (or set"
                " ISPBILL_SECRETS_KEY). If the key is lost for good, write a new key file"
                " (`ispbill secrets new-key`), start, and give each NAS a new secret with"
                " PUT /api/v1/nas/<id> (docs/runbooks/secrets-key.md)"
            )
        log.error(
            "NAS secrets in the ledger are sealed with key(s) %s, which the keyring (%s) lacks:"
            " those NASes are left out by the collector",
            ", ".join(sorted(missing)),
            ", ".join(keyring.key_ids),
        )

    def render_pdf(self, invoice: InvoiceIssued, status: str) -> bytes:
        return render_invoice_pdf(invoice, branding(self.settings), status=status)

    @property
    def invoice_queries(self) -> ProjectedInvoiceQueries:
        return ProjectedInvoiceQueries(self.reads, self.render_pdf)

    def http_app(self) -> FastAPI:
        return create_app(
            [
                staff_router(self.store, self.clock, self.require_keyring(), self.login_throttle),
                accounts_router(
                    self.store,
                    self.clock,
                    self.require_keyring(),
                    AccountsQueries(self.reads),
                    timezone=self.settings.timezone,
                ),
                imports_router(self.store, self.clock),
                rating_router(self.store, self.settings.timezone, self.reads),
                discrepancies_router(
                    self.reads, default_threshold_pct=self.settings.usage_discrepancy_pct
                ),
                invoicing_router(
                    self.store,
                    self.clock,
                    billing_settings(self.settings),
                    self.invoice_queries,
                    ProjectedCatalogue(self.reads),
                    ProjectedCreditNotes(self.reads),
                ),
                payments_router(
                    self.store, self.clock, self.invoice_queries, PaymentQueries(self.reads)
                ),
                operations_router(self.store, self.require_read_models(), self.projector),
                self._collector_router(),
            ],
            error_statuses={
                AlreadyExists: 409,
                AddressInUse: 409,
                Conflict: 409,
                UsernameTaken: 409,
                DuplicatePaymentReference: 409,
                NotFound: 404,
                InvalidPlan: 422,
                RuleViolated: 422,
                NoTaxRule: 422,
                InvalidPayment: 422,
                InvoicingNotFound: 404,
                CreditNoteConflict: 409,
                InvoicingError: 422,
                InvalidStaffCommand: 422,
                TooManyAttempts: 429,
            },
            authenticator=self.authenticator,
            health_checks={"ledger": self._ledger_ok},
            **self._http_limits(),
        )

    def _http_limits(self) -> dict[str, Any]:
        s = self.settings
        return {
            "max_body_bytes": s.max_body_bytes,
            # The detail-file import takes up to 10,000 records a call: its own, larger limit.
            "body_limits": {RADIUS_DETAIL_IMPORT_PATH: s.max_import_body_bytes},
            "body_read_timeout": s.http_read_timeout,
        }

    def _collector_router(self) -> APIRouter:
        not_here = problem_responses({404: "this process runs no collector (or no pollers)"})
        router = APIRouter(prefix="/api/v1", tags=["usage-collector"])

        @router.get(
            "/collector/counters", dependencies=[requires(COLLECTOR_READ)], responses=not_here
        )
        async def counters() -> dict[str, int]:
            """Accounting packets received, acknowledged, and dropped by reason."""
            if self.collector_counters is None:
                raise HTTPException(404, "no collector runs in this process")
            return self.collector_counters()

        @router.get("/collector/drops", dependencies=[requires(COLLECTOR_READ)], responses=not_here)
        async def drops() -> dict[str, dict[str, Any]]:
            """Dropped accounting per source address: its NAS (null: none registered there),
            first and last drop, and the count per reason. The unregistered router whose
            usage goes unbilled, the NAS with the wrong secret."""
            if self.collector_drops is None:
                raise HTTPException(404, "no collector runs in this process")
            return self.collector_drops()

        @router.get(
            "/collector/pollers", dependencies=[requires(COLLECTOR_READ)], responses=not_here
        )
        async def pollers() -> dict[str, dict[str, int]]:
            """Per router (ISPBILL_POLLERS): polls, samples published, errors by kind."""
            if self.poller_counters is None:
                raise HTTPException(404, "no router pollers run in this process")
            return self.poller_counters()

        if self.collector_imports is None:
            return router
        both = APIRouter()
        both.include_router(router)
        both.include_router(self.collector_imports)
        return both

    def collector_app(self) -> FastAPI:
        return create_app(
            [self._collector_router()],
            error_statuses={},
            authenticator=self.authenticator,
            health_checks={"ledger": self._ledger_ok},
            title="ispbill usage collector",
            **self._http_limits(),
        )

    async def _ledger_ok(self) -> bool:
        try:
            await self.store.read_all(after=0, limit=1)
        except Exception:
            return False
        return True

    def mailer(self) -> Mailer:
        s = self.settings
        if s.smtp_host:
            if s.smtp_security not in ("", "starttls", "tls"):
                raise SystemExit(
                    f"ISPBILL_SMTP_SECURITY must be starttls, tls or empty, not {s.smtp_security!r}"
                )
            return SmtpMailer(
                SmtpSettings(
                    host=s.smtp_host,
                    port=s.smtp_port,
                    username=s.smtp_username or None,
                    password=s.smtp_password or None,
                    starttls=s.smtp_security == "starttls",
                    use_tls=s.smtp_security == "tls",
                )
            )
        return OutboxMailer(self.settings.data_dir / "outbox")

    def subscriber(
        self,
        name: str,
        types: set[str],
        handler: Callable[[RecordedEvent], Awaitable[Any]],
        batch_handler: BatchHandler | None = None,
    ) -> LedgerSubscriber:
        async def handle(event: RecordedEvent) -> None:
            await handler(event)

        return LedgerSubscriber(
            name,
            self.store,
            self.store,
            handle,
            types=types,
            parking=self.read_models,
            batch_handler=batch_handler,
        )

    def rating_subscriber(self) -> LedgerSubscriber:
        """Rates the accounting records in batches (one transaction per batch); a batch that
        fails for good is rated record by record, so that only the bad record is parked."""
        rating = self.embedded_rating()
        cache = RatingCache()

        async def rate_batch(batch: Sequence[RecordedEvent], checkpoint: tuple[str, int]) -> bool:
            await rating.rate_batch(batch, cache, checkpoint=checkpoint)
            return True  # the checkpoint moved with the batch's last write

        return self.subscriber(
            RATING_SUBSCRIBER,
            {AccountingRecordReceived.event_type},
            rating.rate_record,
            batch_handler=rate_batch,
        )

    def tariff_subscriber(self) -> LedgerSubscriber:
        """Follows rated usage in ledger order and emits the quota and fair-usage thresholds
        it reaches (one subscriber: the log's order decides what was used first)."""
        tracker = TariffTracker(self.store)
        return self.subscriber(
            "rating.tariff",
            set(TARIFF_TYPES),
            tracker.handle,
            batch_handler=tracker.handle_batch,
        )

    def router_counters_subscriber(self) -> LedgerSubscriber:
        """Rates router counter samples (subscribers measured by routers, not RADIUS) in
        batches, each with its checkpoint in one transaction."""
        rating = RatingSettings(timezone=self.settings.timezone)

        async def rate_batch(batch: Sequence[RecordedEvent], checkpoint: tuple[str, int]) -> bool:
            await rate_router_counters(self.store, rating, batch, checkpoint=checkpoint)
            return True

        return self.subscriber(
            "rating.router-counters",
            {RouterCountersSampled.event_type},
            lambda e: rate_router_counters(self.store, rating, [e]),
            batch_handler=rate_batch,
        )

    def unmatched_usage_subscriber(self) -> LedgerSubscriber:
        """Usage of a username from before its subscription (or the change of username that
        gave it the username) was recorded, rated once it is."""
        rating = RatingSettings(timezone=self.settings.timezone)

        async def handle(event: RecordedEvent) -> None:
            started = event.decode()
            if isinstance(started, RadiusUsernameChanged):
                await rate_unmatched_usage_of_new_username(self.store, rating, started)
                return
            assert isinstance(started, SubscriptionStarted)
            await rate_unmatched_usage(self.store, rating, started)

        return self.subscriber(
            "rating.unmatched-usage",
            {SubscriptionStarted.event_type, RadiusUsernameChanged.event_type},
            handle,
        )

    def allocation_subscriber(self) -> LedgerSubscriber:
        # Not FreshReads: a payment only needs the read model to locate an invoice it
        # does not name the period of (recorded before payments did); lagging is retried.
        locator = ProjectedInvoiceQueries(self.require_read_models(), self.render_pdf)
        return self.subscriber(
            "invoicing.allocate-payments",
            {PaymentReceived.event_type},
            lambda e: allocate_payment(self.store, e, locator),
        )

    def notifier_subscriber(self) -> LedgerSubscriber:
        sender = SenderIdentity(name=self.settings.isp_name, address=self.settings.mail_from)
        mailer = self.mailer()

        class Documents:
            async def invoice_pdf(inner, invoice: InvoiceIssued) -> bytes:
                return await asyncio.to_thread(self.render_pdf, invoice, "ISSUED")

        documents = Documents()
        return self.subscriber(
            "notifier.email-invoices",
            {InvoiceIssued.event_type},
            lambda e: email_invoice(self.store, self.clock, documents, mailer, sender, e),
        )


@contextlib.asynccontextmanager
async def projections_running(services: Services) -> AsyncIterator[Projector]:
    """The read models opened and this process's projections kept up to date meanwhile (what
    `ispbill run` and `ispbill serve api` do around the API; tests use it the same way)."""
    await services.open_read_models(run_projections=True)
    assert services.projector is not None
    task = asyncio.create_task(services.projector.run(), name="projections")
    try:
        yield services.projector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await services.require_read_models().close()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def serve_http(
    app: FastAPI, host: str, port: int, timeouts: HttpTimeouts | None = None
) -> AsyncIterator[_Uvicorn]:
    timeouts = timeouts or HttpTimeouts()
    server = _Uvicorn(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            http=protocol_with(timeouts),
            timeout_keep_alive=max(1, round(timeouts.keep_alive)),
        )
    )
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("HTTP server stopped during start-up")
        await asyncio.sleep(0.02)
    log.info("REST API on http://%s:%d (OpenAPI at /openapi.json)", host, port)
    # Everything made during start-up (modules, the app and its routes, pydantic's schemas)
    # lives as long as the process: out of the collector's way, a full collection scans only
    # what requests made. Without it, one request in ~100 paid an 80 ms pause (bench-reads).
    gc.collect()
    gc.freeze()
    try:
        yield server
    finally:
        server.should_exit = True
        await task


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@contextlib.asynccontextmanager
async def background(
    *runners: Callable[[], Awaitable[Any]],
) -> AsyncIterator[list[asyncio.Task[Any]]]:
    tasks = [asyncio.create_task(r()) for r in runners]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_embedded(settings: Settings, *, with_demo: bool = False) -> None:
    """`ispbill run`: every service in this process on the SQLite ledger."""
    from ispbill_app.collector_runtime import ConfiguredPollers, embedded_stream_for
    from ispbill_core.bus.ledger import LedgerPublisher
    from usage_collector.bootstrap import bootstrap as collector_bootstrap
    from usage_collector.entrypoints.http import collector_import_router

    setup_tracing("ispbill")
    private_directory(settings.data_dir)
    services = Services(settings, None)
    keyring = services.require_keyring()  # before the ledger: no key, nothing started
    store = services.store = await open_ledger(settings)
    try:
        await services.check_keyring_opens_the_ledger()
        await services.open_read_models(run_projections=True)
        await services.open_timers()
    except BaseException:
        await store.close()
        raise
    assert services.projector is not None
    publisher = LedgerPublisher(store, embedded_stream_for)
    pollers = ConfiguredPollers(
        settings.pollers, publisher, services.clock, only_on_host=settings.pollers_host
    )
    collector = collector_bootstrap(
        store,
        publisher,
        keyring=keyring,
        host=settings.host,
        port=settings.radius_acct_port,
        clock=services.clock,
    )
    await collector.start()
    services.collector_counters = collector.accounting_server.counters.as_dict
    services.collector_drops = collector.accounting_server.drops.as_dict
    services.poller_counters = pollers.counters
    services.collector_imports = collector_import_router(
        collector.nas_registry, publisher, services.clock
    )
    log.info("RADIUS accounting on udp://%s:%d", settings.host, settings.radius_acct_port)
    demo_password = await ensure_demo_admin(services) if with_demo else None
    grpc_server, _ = await start_grpc(services)
    subscribers = [
        services.rating_subscriber(),
        services.router_counters_subscriber(),
        services.unmatched_usage_subscriber(),
        services.tariff_subscriber(),
        services.allocation_subscriber(),
        services.notifier_subscriber(),
    ]
    # every service's timers, fired by one runner (each service's bootstrap names its kinds)
    schedule = bill_run_schedule(services)
    await schedule.ensure_scheduled()
    timer_runner = services.timer_runner(
        {**services.embedded_rating().timer_handlers(), **schedule.timer_handlers()}
    )
    try:
        async with (
            background(
                *(s.run for s in subscribers),
                pollers.run,
                services.projector.run,
                timer_runner.run,
            ),
            serve_http(
                services.http_app(), settings.host, settings.http_port, settings.http_timeouts
            ),
        ):
            if with_demo:
                await _load_demo(settings, demo_password)
            log.info("ispbill is running (data in %s); Ctrl-C stops it", settings.data_dir)
            await _until_signalled()
    finally:
        log.info("stopping")
        await collector.stop()
        if grpc_server is not None:
            await grpc_server.stop(grace=2)
        await services.require_timers().close()
        await services.require_read_models().close()
        await store.close()


def grpc_services(services: Services) -> list[Any]:
    """The gRPC services a process serves (`GrpcService`s): InvoiceService, AccountsService and
    UsageService, each answered from the read models."""
    from accounts.entrypoints.grpc_server import accounts_grpc_service
    from invoicing.entrypoints.grpc_server import invoice_grpc_service
    from rating.entrypoints.grpc_server import usage_grpc_service

    return [
        invoice_grpc_service(services.invoice_queries, ProjectedCreditNotes(services.reads)),
        accounts_grpc_service(
            AccountsQueries(services.reads),
            services.store,
            services.clock,
            services.settings.timezone,
        ),
        usage_grpc_service(
            UsageQueries(services.reads), SessionQueries(services.reads, services.settings.timezone)
        ),
    ]


async def start_grpc(services: Services) -> tuple[Any, int]:
    """One gRPC server for every service of `grpc_services`, with health checks and
    reflection, on settings.grpc_port (0: a free port); returns the server and its port."""
    from ispbill_core.grpc_server import serve_grpc

    served = grpc_services(services)
    server, port = await serve_grpc(
        served,
        authenticator=services.authenticator,
        host=services.settings.host,
        port=services.settings.grpc_port,
    )
    log.info("gRPC %s on %s:%d", ", ".join(s.name for s in served), services.settings.host, port)
    return server, port


DEMO_ADMIN = "admin"
DEMO_ADMIN_PASSWORD_ENV = "ISPBILL_DEMO_ADMIN_PASSWORD"  # noqa: S105 - a variable's name


def demo_admin_file(settings: Settings) -> Path:
    return settings.data_dir / "demo-admin.txt"


async def ensure_demo_admin(services: Services) -> str | None:
    """`run --with-demo` on a ledger without staff: the staff user `admin` (role admin), its
    password from ISPBILL_DEMO_ADMIN_PASSWORD or made up, logged and written to
    <data_dir>/demo-admin.txt (0600). With staff already there: the password the demo logs in
    with (the environment's, else that file's), or None."""
    import os
    import secrets

    from accounts.application.staff import create_staff_user, has_staff
    from ispbill_core.access import ADMIN, system_actor

    path = demo_admin_file(services.settings)
    given = os.environ.get(DEMO_ADMIN_PASSWORD_ENV)
    if await has_staff(services.store):
        if given:
            return given
        if path.exists():
            return str(path.read_text(encoding="utf-8").strip())
        return None
    password = given or secrets.token_urlsafe(15)
    await create_staff_user(
        services.store, services.clock, DEMO_ADMIN, ADMIN, password, system_actor("demo")
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    log.warning(
        "demo staff user %r (role admin) created with password %s (also in %s); log in with"
        " `ispbill login` or POST /api/v1/auth/token",
        DEMO_ADMIN,
        password,
        path,
    )
    return password


async def _load_demo(settings: Settings, password: str | None) -> None:
    from ispbill_app.client import ApiClient, ApiError, log_in
    from ispbill_app.demo import load_demo

    if password is None:
        log.warning(
            "demo ISP not loaded: the ledger has staff users but no demo admin password (set"
            " %s, or log in and run `ispbill demo`)",
            DEMO_ADMIN_PASSWORD_ENV,
        )
        return
    server = f"http://{settings.host}:{settings.http_port}"

    def load() -> dict[str, int]:
        token = log_in(server, DEMO_ADMIN, password, name="demo-loader", expires_in_days=1)
        client = ApiClient(server, token=token)
        try:
            return load_demo(client)
        finally:
            client.close()

    try:
        present = await asyncio.to_thread(load)
    except ApiError as exc:
        log.warning("demo ISP not loaded: %s", exc)
        return
    log.info("demo ISP loaded: %s", present)


async def run_component(component: str, settings: Settings) -> None:
    """`ispbill serve <component>`: one service of the distributed runtime."""
    setup_tracing(f"ispbill-{component}")
    private_directory(settings.data_dir)
    services = Services(settings, None)
    if component in {"api", "collector"}:
        services.require_keyring()  # the NAS secrets: sealed by the API, opened by the collector
    store = services.store = await open_ledger(settings)
    try:
        if services.keyring is not None:
            await services.check_keyring_opens_the_ledger()
        # The processes that answer reads (REST, gRPC) keep the projections up to date; a
        # second replica doing the same is safe (checkpoints move optimistically).
        await services.open_read_models(run_projections=component in {"api", "invoicing"})
        projections = services.projector.run if services.projector is not None else _idle
        if component == "collector":
            await _serve_collector(services)
        elif component == "rating":
            await _serve_rating(services)
        elif component == "api":
            async with (
                background(projections),
                serve_http(
                    services.http_app(), settings.host, settings.http_port, settings.http_timeouts
                ),
            ):
                await _until_signalled()
        elif component == "invoicing":
            server, _ = await start_grpc(services)
            # the scheduled bill runs: each replica runs the timers, a due one goes to one
            await services.open_timers()
            schedule = bill_run_schedule(services)
            await schedule.ensure_scheduled()
            bill_runs = services.timer_runner(schedule.timer_handlers())
            try:
                async with background(
                    services.allocation_subscriber().run, projections, bill_runs.run
                ):
                    await _until_signalled()
            finally:
                await server.stop(grace=2)
        elif component == "notifier":
            async with background(services.notifier_subscriber().run):
                await _until_signalled()
        else:
            raise SystemExit(f"unknown component {component!r}")
    finally:
        if services.timers is not None:
            await services.timers.close()
        if services.read_models is not None:
            await services.read_models.close()
        await store.close()


async def _idle() -> None:
    """Nothing to run (a process without projections)."""


def _require_kafka(settings: Settings) -> str:
    if not settings.kafka:
        raise SystemExit("this component needs --kafka HOST:PORT (or ISPBILL_KAFKA)")
    return settings.kafka


async def _serve_collector(services: Services) -> None:
    from ispbill_app.collector_runtime import ConfiguredPollers
    from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
    from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC, ROUTER_COUNTERS_TOPIC
    from usage_collector.adapters.spool import RenewablePublisher, SpoolingPublisher
    from usage_collector.bootstrap import bootstrap as collector_bootstrap
    from usage_collector.entrypoints.http import collector_import_router

    s = services.settings
    bootstrap = _require_kafka(s)

    topic_timeout = max(s.publish_timeout, 5.0)

    async def create_topics() -> None:
        await ensure_topics(
            bootstrap,
            [ACCOUNTING_TOPIC, ROUTER_COUNTERS_TOPIC],
            partitions=s.kafka_partitions,
            request_timeout=topic_timeout,
        )

    # A new producer (and the topic again) after failures: a broker that lost its state
    # answers an idempotent producer with UnknownProducerId for good. The adapters' own
    # timeouts (delivery_timeout also bounds the producer's start) come before the outer ones.
    kafka = RenewablePublisher(
        lambda: KafkaPublisher(
            bootstrap, client_id="ispbill-collector", delivery_timeout=s.publish_timeout
        ),
        prepare=create_topics,
        start_timeout=topic_timeout + 5.0,
    )
    # Kafka unreachable or slow: batches go to a local spool (fsynced) and are acknowledged;
    # the spool drains in order when Kafka is back (docs/adr/0010-collector-spool.md).
    publisher = SpoolingPublisher(
        kafka,
        s.spool_dir,
        publish_timeout=s.publish_timeout,
        recover=kafka.renew,
        max_spool_bytes=s.spool_max_bytes or None,
    )
    # Router counters share the bus and its spool with the accounting records.
    pollers = ConfiguredPollers(s.pollers, publisher, services.clock, only_on_host=s.pollers_host)
    await publisher.start()
    collector = collector_bootstrap(
        services.store,
        publisher,
        keyring=services.require_keyring(),
        host=s.host,
        port=s.radius_acct_port,
        clock=services.clock,
    )
    try:
        await collector.start()
        accounting = collector.accounting_server.counters
        services.collector_counters = lambda: {
            **accounting.as_dict(),
            **publisher.counters_dict(),
        }
        services.collector_drops = collector.accounting_server.drops.as_dict
        services.poller_counters = pollers.counters
        # `ispbill import radius-detail --server http://<collector>` lands here.
        services.collector_imports = collector_import_router(
            collector.nas_registry, publisher, services.clock
        )
        log.info(
            "RADIUS accounting on udp://%s:%d -> kafka %s (spool %s)",
            s.host,
            s.radius_acct_port,
            bootstrap,
            s.spool_dir,
        )
        # Drop and spool counters are on /api/v1/collector/counters; /healthz checks the ledger.
        async with (
            background(pollers.run),
            serve_http(services.collector_app(), s.host, s.http_port, s.http_timeouts),
        ):
            await _until_signalled()
    finally:
        await collector.stop()
        await publisher.stop()


async def _serve_rating(services: Services) -> None:
    from ispbill_core.bus.kafka_backlog import KafkaBacklog
    from ispbill_core.bus.kafka_dead_letters import KafkaDeadLetters, dead_letter_topic
    from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC, ROUTER_COUNTERS_TOPIC
    from rating.entrypoints.faust_app import create_rating_app, run_rating_worker_recovering

    bootstrap = _require_kafka(services.settings)
    # Records move their sessions' silence deadlines before they are rated; this process
    # fires rating's timers (several replicas share them: each due timer goes to one). A
    # deadline waits while the group has not consumed records received before it (a replay,
    # a worker that was down): one of them may be the session's.
    await services.open_timers()
    backlog = KafkaBacklog(bootstrap, RATING_GROUP, ACCOUNTING_TOPIC)
    rating = services.rating(backlog=backlog)
    timer_runner = services.timer_runner(rating.timer_handlers())
    parking = services.require_read_models()
    cache = RatingCache()

    async def rate(message: Any) -> None:
        await rating.rate_record(message)

    async def rate_batch(messages: Sequence[Any]) -> None:
        await rating.rate_batch(messages, cache)

    # A record that can never be rated (bad data, a bug) goes to the dead-letter topic with
    # its reason and its partition goes on; a transient failure (the ledger down) is retried
    # (ADR 0026). The batch that held it is rated record by record to find it.
    dead_letters = KafkaDeadLetters(bootstrap, client_id="ispbill-rating-dead-letters")

    counters = RatingSettings(timezone=services.settings.timezone)

    async def rate_samples(messages: Sequence[Any]) -> None:
        """Router counter samples (subscribers measured by routers), in one transaction; a
        batch that fails for good is rated sample by sample, the bad one dead-lettered."""
        await rate_router_counters(services.store, counters, messages)

    def rating_app() -> Any:
        return create_rating_app(
            broker=f"kafka://{bootstrap}",
            handler=rate,
            batch_handler=rate_batch,
            data_dir=str(services.settings.data_dir / "faust"),
            fast_join=True,
            dead_letters=dead_letters,
            counters_handler=rate_samples,
            app_id=RATING_GROUP,
        )

    # A new app, after the topics are created again, whenever the broker loses them.
    worker = asyncio.create_task(
        run_rating_worker_recovering(
            rating_app,
            broker=bootstrap,
            topics={
                ACCOUNTING_TOPIC: services.settings.kafka_partitions,
                dead_letter_topic(ACCOUNTING_TOPIC): 1,
                ROUTER_COUNTERS_TOPIC: services.settings.kafka_partitions,
                dead_letter_topic(ROUTER_COUNTERS_TOPIC): 1,
            },
        ),
        name="rating-worker",
    )
    signalled = asyncio.create_task(_until_signalled(), name="signals")
    # Subscriptions come from the ledger, not the topic: a ledger subscriber beside the worker
    # rates the usage a username had before its subscription was recorded. Records parked by
    # versions before the dead-letter topic can still be retried (`ispbill parked retry`).
    try:
        async with background(
            services.unmatched_usage_subscriber().run,
            services.tariff_subscriber().run,
            lambda: retry_parked_forever(parking, RATING_CONSUMER, rate),
            timer_runner.run,
        ):
            done, _ = await asyncio.wait({worker, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if worker in done:
                signalled.cancel()
                worker.result()  # a crashed worker exits the process non-zero
                return
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    finally:
        try:
            await dead_letters.stop()
        finally:
            await backlog.close()
