"""bench-billrun: a bill run over many customers on PostgreSQL, then their PDFs.

1. seeds CUSTOMERS customers (default 100,000; `--customers N` or ISPBILL_BENCH_CUSTOMERS) in a
   database of its own on the PostgreSQL server of ISPBILL_BENCH_PG_ADMIN_DSN (dropped
   afterwards): each with a subscription on a plan, three usage buckets in November 2026 (one
   beyond the included data: an overage line), tax rules of two levels (a supplementary duty
   and a compound VAT), and for 5 % of them a plan change on the 15th (two prorated lines);
2. runs the bill run for 2026-11 as `POST /api/v1/bill-runs` does (the catalogue read from the
   log), timed: invoices issued per second;
3. renders every invoice's PDF in a process pool of one worker per core: PDFs per second
   (Latin text: the core-font path); and `--bengali-pdfs` of them again in Bengali for a
   Bengali-named customer (the embedded-font path), reported on a line of its own;
4. runs `audit verify` (every invoice re-derived from the log) and `audit chain verify` over
   the same ledger: invoices verified per second, and chained rows walked per second.

The anchor, for the record: Frisbii billed 48,450 accounts in 84 minutes with PDFs (9.6 a
second); the goals: at least 1,000 invoices/s, 200 PDFs/s, the whole run under 10 minutes,
and `audit verify` at least as fast as the bill run.

Last line: RESULT billrun customers=<n> invoices_per_s=<n> pdfs_per_s=<n> total_s=<n>
verify_per_s=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
from machine_info import machine  # bench/, beside this script

from invoicing.adapters.pdf import Branding, render_invoice_pdf
from invoicing.application.audit import verify_invoices
from invoicing.application.close_billing_period import close_billing_period
from invoicing.application.settings import BillingSettings
from ispbill_core import gc_tuning
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    GIGABYTE,
    CustomerRegistered,
    PlanDefined,
    SubscriptionPlanChanged,
    SubscriptionStarted,
    customer_stream,
    plan_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import InvoiceIssued, TaxRuleSet, tax_region_stream
from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.events import DomainEvent, NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM, EventStore
from ispbill_core.eventstore.postgresql import PostgresEventStore
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.money import Money

PG_ADMIN_DSN = os.environ.get(
    "ISPBILL_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PERIOD = "2026-11"
AT = datetime(2026, 11, 20, tzinfo=UTC)
RUN_AT = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
TZ = ZoneInfo("Asia/Dhaka")
ANCHOR_PER_S = 48_450 / (84 * 60)  # Frisbii, accounts with PDFs per second
BRANDING = Branding(isp_name="Bench ISP Ltd.", address="Dhaka", tax_id="BIN-000000000")


def one(stream: str, event: DomainEvent, n: int = 0) -> tuple[str, list[NewEvent], object]:
    return (
        stream,
        [new_event(event, id=deterministic_id("bench", stream, n), occurred_at=AT, actor="bench")],
        NO_STREAM,
    )


async def seed(store: EventStore, customers: int) -> None:
    batches = [
        one(
            tax_region_stream("BD"),
            TaxRuleSet(
                region="BD",
                tax_code="VAT",
                name="VAT",
                rate=Decimal("0.15"),
                effective_from=date(2020, 1, 1),
                compound=True,
                sequence=1,
            ),
        ),
        one(
            tax_region_stream("BD.dhaka"),
            TaxRuleSet(
                region="BD.dhaka",
                tax_code="SD",
                name="Supplementary duty",
                rate=Decimal("0.10"),
                effective_from=date(2020, 1, 1),
            ),
        ),
    ]
    for plan_id, fee in (("home", "1000.00"), ("fast", "1500.00")):
        batches.append(
            one(
                plan_stream(plan_id),
                PlanDefined(
                    plan_id=plan_id,
                    name=plan_id.title(),
                    monthly_fee=Money.of(fee, "BDT"),
                    included_bytes=50 * GIGABYTE,
                    overage_price=Money.of("10.00", "BDT"),
                ),
            )
        )
    await store.append_many(batches)  # type: ignore[arg-type]
    batches = []
    for n in range(customers):
        cid = f"c-{n:06d}"
        sid = f"s-{n:06d}"
        batches.append(
            one(
                customer_stream(cid),
                CustomerRegistered(
                    customer_id=cid,
                    name=f"Customer {n}",
                    email=f"{cid}@example.com",
                    tax_region="BD.dhaka.gulshan",
                    billing_address=f"House {n}, Road 1, Gulshan, Dhaka",
                ),
            )
        )
        started = SubscriptionStarted(
            subscription_id=sid,
            customer_id=cid,
            plan_id="home",
            radius_username=cid,
            started_on=date(2026, 1, 1),
        )
        events = [started]
        if n % 20 == 0:  # 5 %: an upgrade on the 15th
            events.append(
                SubscriptionPlanChanged(
                    subscription_id=sid,
                    from_plan_id="home",
                    plan_id="fast",
                    effective_on=date(2026, 11, 15),
                )
            )
        batches.append(
            (
                subscription_stream(sid),
                [
                    new_event(e, id=deterministic_id("bench", sid, i), occurred_at=AT, actor="b")
                    for i, e in enumerate(events)
                ],
                NO_STREAM,
            )
        )
        usage = [
            UsageRated(
                customer_id=cid,
                subscription_id=sid,
                period=PERIOD,
                session_key=f"nas-1-{n}-{k}",
                record_id=deterministic_id("bench-usage", n, k),
                input_octets=2 * GIGABYTE * (k + 1),
                output_octets=15 * GIGABYTE,
                occurred_at=AT,
            )
            for k in range(3)
        ]
        batches.append(
            (
                usage_stream(cid, PERIOD),
                [new_event(u, id=u.record_id, occurred_at=AT, actor="bench") for u in usage],
                NO_STREAM,
            )
        )
        if len(batches) >= 600:
            await store.append_many(batches)  # type: ignore[arg-type]
            batches = []
    if batches:
        await store.append_many(batches)  # type: ignore[arg-type]


def _render(invoice_json: str) -> int:
    invoice = InvoiceIssued.model_validate_json(invoice_json)
    return len(render_invoice_pdf(invoice, BRANDING))


def render_all(invoices: list[InvoiceIssued]) -> float:
    """PDFs per second over a pool of one process per core."""
    payloads = [i.model_dump_json() for i in invoices]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sizes = list(pool.map(_render, payloads, chunksize=64))
    spent = time.perf_counter() - started
    assert all(size > 1000 for size in sizes)
    return len(sizes) / spent


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--customers", type=int, default=int(os.environ.get("ISPBILL_BENCH_CUSTOMERS", "100000"))
    )
    parser.add_argument(
        "--pdf-sample",
        type=int,
        default=0,
        help="render this many PDFs (the rate is measured on them; 0: every invoice)",
    )
    parser.add_argument(
        "--bengali-pdfs",
        type=int,
        default=400,
        help="also render this many invoices in Bengali, for a Bengali-named customer (the"
        " embedded-font path of ADR 0033; reported apart, not in the RESULT line)",
    )
    args = parser.parse_args()
    gc_tuning.tune()
    print(f"bench-billrun on {machine()}; {args.customers} customers", flush=True)
    database = f"ispbill_bench_billrun_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    store = await PostgresEventStore.connect(f"{base}/{database}", schema="ispbill")
    try:
        started = time.perf_counter()
        await seed(store, args.customers)
        print(f"seeded in {time.perf_counter() - started:.1f}s", flush=True)
        settings = BillingSettings(timezone=TZ)
        started = time.perf_counter()
        report = await close_billing_period(store, FixedClock(RUN_AT), settings, PERIOD)
        billing_s = time.perf_counter() - started
        issued = len(report.issued)
        assert issued == args.customers, (issued, report.skipped, report.failed)
        invoices_per_s = issued / billing_s
        print(
            f"bill run: {issued} invoices in {billing_s:.1f}s: {invoices_per_s:.0f}/s", flush=True
        )
        invoices = await all_events_of(store, InvoiceIssued)
        if args.pdf_sample > 0:
            invoices = invoices[: args.pdf_sample]
        started = time.perf_counter()
        pdfs_per_s = render_all(invoices)
        pdf_s = time.perf_counter() - started
        print(f"PDFs: {len(invoices)} in {pdf_s:.1f}s: {pdfs_per_s:.0f}/s", flush=True)
        if args.bengali_pdfs > 0:
            bengali = [
                i.model_copy(update={"customer_name": "মোহাম্মদ রহিম উদ্দিন", "language": "bn"})
                for i in invoices[: args.bengali_pdfs]
            ]
            bengali_per_s = render_all(bengali)
            print(
                f"PDFs in Bengali (embedded Noto fonts, shaped): {len(bengali)} at"
                f" {bengali_per_s:.0f}/s",
                flush=True,
            )
        # every invoice's PDF at the measured rate, when only a sample was rendered
        total_s = billing_s + args.customers / pdfs_per_s
        with_pdfs = args.customers / total_s
        print(
            f"run with PDFs: {total_s:.1f}s, {with_pdfs:.0f} accounts/s;"
            f" {with_pdfs / ANCHOR_PER_S:.1f}x the anchor (Frisbii, {ANCHOR_PER_S:.1f}/s)",
            flush=True,
        )
        started = time.perf_counter()
        audit = await verify_invoices(store, settings, period=PERIOD)
        verify_s = time.perf_counter() - started
        assert audit.ok and audit.invoices_checked == issued, audit.findings[:5]
        verify_per_s = issued / verify_s
        print(
            f"audit verify: {issued} invoices ({audit.events_read} events read) in"
            f" {verify_s:.1f}s: {verify_per_s:.0f}/s, {verify_per_s / invoices_per_s:.2f}x the"
            " bill run",
            flush=True,
        )
        started = time.perf_counter()
        chain = await store.verify_chain()
        chain_s = time.perf_counter() - started
        assert chain.ok, chain.reason
        print(
            f"audit chain verify: {chain.checked} rows in {chain_s:.1f}s:"
            f" {chain.checked / chain_s:.0f} rows/s",
            flush=True,
        )
    finally:
        await store.close()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
    print(
        f"RESULT billrun customers={args.customers} invoices_per_s={invoices_per_s:.0f}"
        f" pdfs_per_s={pdfs_per_s:.0f} total_s={total_s:.0f} verify_per_s={verify_per_s:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
