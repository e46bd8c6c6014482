"""The read side at a large ISP's size: projection rebuild speed and REST query latency.

Run: `uv run --frozen python bench/bench_reads.py` (or `make bench-reads`).

For each store (SQLite in a temp dir, then PostgreSQL in a database created on
ISPBILL_BENCH_PG_ADMIN_DSN and dropped afterwards) it builds a ledger of 100,000 customers
(ISPBILL_BENCH_CUSTOMERS) with a subscription and six months of invoices each, a payment for
most invoices: at least 1,000,000 events. Then, in this process:

- the raw read rate: read_all over the whole ledger in batches of 500 (events/s);
- the rebuild rate: every projection dropped and refilled from position 0, one after another,
  events folded per second (each projection reads only its own types, so the events folded
  add up to more than the ledger when several projections fold one type).

The ratio rebuild/raw is the goal's number (at least 0.5). Then `ispbill serve api` runs in its
own process against that ledger, and this process measures p50/p99 of, sequentially, over
loopback HTTP:

- customer search: GET /api/v1/customers?q=<part of a name>&limit=20
- invoice list: GET /api/v1/invoices?limit=50 (newest first), and with status=issued
- a customer's invoice history: GET /api/v1/invoices?customer_id=<id>

Last line: RESULT reads rebuild_ratio=<n> search_p99_ms=<n> invoice_list_p99_ms=<n>
store=postgresql (the PostgreSQL figures; SQLite's are printed above it).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from machine_info import machine  # bench/, beside this script

from ispbill_core.events import EncodedEvent, EventMetadata, deterministic_id
from ispbill_core.eventstore import NO_STREAM, EventStore
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.projections import ReadModelDatabase
from ispbill_core.projections.projector import Projector

PG_ADMIN_DSN = os.environ.get(
    "ISPBILL_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CUSTOMERS = int(os.environ.get("ISPBILL_BENCH_CUSTOMERS", "100000"))
MONTHS = 6
QUERIES = int(os.environ.get("ISPBILL_BENCH_QUERIES", "300"))
STORES = os.environ.get("ISPBILL_BENCH_STORES", "sqlite,postgresql").split(",")
FIRST_NAMES = ["Alice", "Rahim", "Karim", "Nusrat", "Fatema", "John", "Maria", "Chen", "Aisha"]
LAST_NAMES = ["Rahman", "Hossain", "Ahmed", "Smith", "Garcia", "Islam", "Khan", "Das", "Roy"]


def metadata_json(at: datetime, actor: str) -> str:
    return EventMetadata(occurred_at=at, actor=actor).model_dump_json(exclude={"recorded_at"})


def encoded(type_: str, key: str, data: dict[str, Any], meta: str) -> EncodedEvent:
    return EncodedEvent(
        id=str(deterministic_id("bench", type_, key)),
        type=type_,
        version=1,
        data_json=json.dumps(data, separators=(",", ":")),
        metadata_json=meta,
    )


def ledger_batches(customers: int) -> list[list[tuple[str, list[EncodedEvent], Any]]]:
    """The whole ledger as append_many batches of ~500 events (streams created NO_STREAM)."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    meta = metadata_json(start, "staff:bench")
    system = metadata_json(start, "system:bench")
    plans = [
        ("plan-home", "Home 20M", "20.00"),
        ("plan-pro", "Pro 50M", "45.00"),
        ("plan-biz", "Business 100M", "120.00"),
    ]
    streams: list[tuple[str, list[EncodedEvent], Any]] = []
    for plan_id, name, fee in plans:
        data = {
            "plan_id": plan_id,
            "name": name,
            "monthly_fee": {"amount": fee, "currency": "USD"},
            "included_bytes": 100 * 10**9,
            "overage_price": {"amount": "1.00", "currency": "USD"},
            "overage_unit_bytes": 10**9,
        }
        streams.append(
            (f"plan-{plan_id}", [encoded("PlanDefined", plan_id, data, meta)], NO_STREAM)
        )
    tax = {"region": "metro", "tax_name": "VAT", "rate": "0.15"}
    streams.append(("tax-region-metro", [encoded("TaxRateSet", "metro", tax, meta)], NO_STREAM))
    number = 0
    for n in range(customers):
        cid = f"c-{n:06d}"
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)} {n}"
        customer = {
            "customer_id": cid,
            "name": name,
            "email": f"{cid}@example.com",
            "tax_region": "metro",
            "billing_address": f"{n} Fiber Street",
        }
        plan_id, _, fee = plans[n % 3]
        username = f"user{n:06d}"
        sub_id = f"s-{n:06d}"
        streams.append(
            (f"customer-{cid}", [encoded("CustomerRegistered", cid, customer, meta)], NO_STREAM)
        )
        claim = {"username": username, "customer_id": cid, "subscription_id": sub_id}
        streams.append(
            (
                f"radius-user-{username}",
                [encoded("RadiusUsernameAssigned", username, claim, meta)],
                NO_STREAM,
            )
        )
        sub = {
            "subscription_id": sub_id,
            "customer_id": cid,
            "plan_id": plan_id,
            "radius_username": username,
            "started_on": "2026-01-01",
        }
        streams.append(
            (
                f"subscription-{sub_id}",
                [encoded("SubscriptionStarted", sub_id, sub, meta)],
                NO_STREAM,
            )
        )
        for m in range(1, MONTHS + 1):
            period = f"2026-{m:02d}"
            number += 1
            issued_at = datetime(2026, m, 1, tzinfo=UTC) + timedelta(days=31)
            tax_amount = f"{float(fee) * 0.15:.2f}"
            total = f"{float(fee) * 1.15:.2f}"
            invoice_id = str(deterministic_id("invoice", cid, period))
            invoice = {
                "invoice_id": invoice_id,
                "number": f"INV-{number:07d}",
                "customer_id": cid,
                "customer_name": name,
                "customer_email": f"{cid}@example.com",
                "billing_address": f"{n} Fiber Street",
                "period": period,
                "issued_at": issued_at.isoformat().replace("+00:00", "Z"),
                "due_on": (issued_at.date() + timedelta(days=14)).isoformat(),
                "currency": "USD",
                "lines": [
                    {
                        "kind": "recurring",
                        "description": f"{plan_id} monthly fee, {period}",
                        "quantity": "1",
                        "unit": "month",
                        "unit_price": {"amount": fee, "currency": "USD"},
                        "amount": {"amount": fee, "currency": "USD"},
                        "source_trace_ids": [],
                    }
                ],
                "subtotal": {"amount": fee, "currency": "USD"},
                "taxes": [
                    {
                        "tax_name": "VAT",
                        "rate": "0.15",
                        "taxable": {"amount": fee, "currency": "USD"},
                        "amount": {"amount": tax_amount, "currency": "USD"},
                    }
                ],
                "tax_total": {"amount": tax_amount, "currency": "USD"},
                "total": {"amount": total, "currency": "USD"},
            }
            inv_meta = metadata_json(issued_at, "system:invoicing.bill-run")
            events = [encoded("InvoiceIssued", invoice_id, invoice, inv_meta)]
            paid = m < MONTHS and n % 10 != 0  # the last month and 1 in 10 customers unpaid
            if paid:
                ref = f"bank-{cid}-{period}"
                payment_id = str(deterministic_id("payment", "manual", ref))
                at = (issued_at + timedelta(days=5)).isoformat().replace("+00:00", "Z")
                streams.append(
                    (
                        f"payment-manual-{ref}",
                        [
                            encoded(
                                "PaymentReceived",
                                ref,
                                {
                                    "payment_id": payment_id,
                                    "gateway": "manual",
                                    "transaction_ref": ref,
                                    "customer_id": cid,
                                    "invoice_id": invoice_id,
                                    "amount": {"amount": total, "currency": "USD"},
                                    "received_at": at,
                                    "method": "bank",
                                    "invoice_period": period,
                                },
                                meta,
                            )
                        ],
                        NO_STREAM,
                    )
                )
                events.append(
                    encoded(
                        "InvoicePaid",
                        invoice_id,
                        {
                            "invoice_id": invoice_id,
                            "payment_id": payment_id,
                            "amount_paid": {"amount": total, "currency": "USD"},
                            "paid_at": at,
                        },
                        system,
                    )
                )
            streams.append((f"invoice-{cid}-{period}", events, NO_STREAM))
    batches: list[list[tuple[str, list[EncodedEvent], Any]]] = []
    current: list[tuple[str, list[EncodedEvent], Any]] = []
    size = 0
    for item in streams:
        current.append(item)
        size += len(item[1])
        if size >= 500:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches


@dataclass
class StoreResult:
    store: str
    events: int = 0
    build_s: float = 0.0
    raw_per_s: float = 0.0
    rebuild_per_s: float = 0.0
    rebuild_s: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.rebuild_per_s / self.raw_per_s if self.raw_per_s else 0.0

    def pct(self, name: str, q: float) -> float:
        values = sorted(self.latencies[name])
        return values[min(len(values) - 1, int(q * len(values)))] * 1000


def ledger_rows(batches: list[list[tuple[str, list[EncodedEvent], Any]]]) -> list[tuple[Any, ...]]:
    """(id, stream, stream_position, type, version, data, metadata) in global order."""
    stamp = "2026-07-01T00:00:00Z"
    rows = []
    for batch in batches:
        for stream, events, _ in batch:
            for position, e in enumerate(events):
                rows.append(
                    (
                        e.id,
                        stream,
                        position,
                        e.type,
                        e.version,
                        e.data_json,
                        e.stamped_metadata(stamp),
                    )
                )
    return rows


async def build(store: EventStore, result: StoreResult) -> None:
    """The ledger is loaded in bulk, straight into the events table: appending a million events
    through append_many is bench-store's subject, and would take PostgreSQL a quarter of an
    hour here (a savepoint and an advisory lock per stream of one or two events)."""
    print(f"[{result.store}] generating {CUSTOMERS} customers...", flush=True)
    rows = ledger_rows(ledger_batches(CUSTOMERS))
    result.events = len(rows)
    print(f"[{result.store}] loading {result.events} events...", flush=True)
    started = time.perf_counter()
    if isinstance(store, SQLiteEventStore):
        sql = (
            "INSERT INTO events (id, stream, stream_position, type, version, data, metadata)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        for start in range(0, len(rows), 50_000):
            chunk = rows[start : start + 50_000]
            await store.run_write(lambda conn, chunk=chunk: conn.executemany(sql, chunk))
    else:
        import asyncpg

        conn = await asyncpg.connect(store.dsn)  # type: ignore[attr-defined]
        try:
            await conn.copy_records_to_table(
                "events",
                schema_name=store.schema,  # type: ignore[attr-defined]
                columns=["id", "stream", "stream_position", "type", "version", "data", "metadata"],
                records=[(uuid.UUID(r[0]), *r[1:]) for r in rows],
            )
            await conn.execute(f'ANALYZE "{store.schema}".events')  # type: ignore[attr-defined]
        finally:
            await conn.close()
    result.build_s = time.perf_counter() - started


async def raw_read(store: EventStore) -> tuple[int, float]:
    started = time.perf_counter()
    after, count = 0, 0
    while True:
        batch = await store.read_all(after=after, limit=500)
        if not batch:
            break
        count += len(batch)
        after = batch[-1].global_position
    return count, time.perf_counter() - started


async def rebuild_all(store: EventStore, db: ReadModelDatabase, timezone: Any) -> tuple[int, float]:
    from ispbill_app.bootstrap import all_projections
    from ispbill_app.settings import Settings

    projector = Projector(store, db, all_projections(Settings(timezone=timezone)))
    started = time.perf_counter()
    counts = await projector.rebuild_now()
    seconds = time.perf_counter() - started
    for name, n in counts.items():
        print(f"    {name}: {n} events", flush=True)
    return sum(counts.values()), seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_api(env: dict[str, str], port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "ispbill_app.cli", "serve", "api",
        "--data-dir", str(data_dir), "--http-port", str(port), "--host", "127.0.0.1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, **env})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"ispbill serve api exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("ispbill serve api did not start")


def measure_queries(port: int, result: StoreResult, headers: dict[str, str]) -> None:
    rng = random.Random(11)
    base = f"http://127.0.0.1:{port}/api/v1"
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        # the API's projections catch up on start (nothing to do: rebuilt already); warm up
        for _ in range(20):
            client.get("/customers", params={"q": "rahman", "limit": 20}).raise_for_status()
        cases = {
            "customer_search": lambda: (
                "/customers",
                {"q": f"{rng.choice(LAST_NAMES)} {rng.randrange(CUSTOMERS)}", "limit": 20},
            ),
            "invoice_list": lambda: (
                "/invoices",
                {"limit": 50}
                if rng.random() < 0.5
                else {"limit": 50, "status": "issued", "period": f"2026-0{rng.randint(1, 6)}"},
            ),
            "customer_invoices": lambda: (
                "/invoices",
                {"customer_id": f"c-{rng.randrange(CUSTOMERS):06d}"},
            ),
        }
        for name, make in cases.items():
            times = []
            for _ in range(QUERIES):
                path, params = make()
                t = time.perf_counter()
                response = client.get(path, params=params)
                times.append(time.perf_counter() - t)
                response.raise_for_status()
            result.latencies[name] = times


@asynccontextmanager
async def sqlite_ledger(
    tmp: Path,
) -> AsyncIterator[tuple[EventStore, ReadModelDatabase, dict[str, str]]]:
    from ispbill_core.projections.sqlite import SQLiteReadModels

    data = tmp / "sqlite"
    data.mkdir()
    store = SQLiteEventStore(data / "ledger.db")
    try:
        yield store, SQLiteReadModels(store), {"ISPBILL_LEDGER": "sqlite"}
    finally:
        await store.close()


@asynccontextmanager
async def postgres_ledger(
    tmp: Path,
) -> AsyncIterator[tuple[EventStore, ReadModelDatabase, dict[str, str]]]:
    import asyncpg

    from ispbill_core.eventstore.postgresql import PostgresEventStore
    from ispbill_core.projections.postgresql import PostgresReadModels

    database = f"ispbill_bench_reads_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    store = await PostgresEventStore.connect(dsn)
    db = await PostgresReadModels.connect(dsn)
    try:
        yield store, db, {"ISPBILL_LEDGER": dsn}
    finally:
        await db.close()
        await store.close()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


async def api_token(store: EventStore) -> str:
    """An admin's token, recorded in the ledger as logging in would (every route needs one)."""
    from accounts.application.staff import create_staff_user, issue_token
    from ispbill_core.access import ADMIN
    from ispbill_core.clock import SystemClock

    clock = SystemClock()
    user = await create_staff_user(store, clock, "bench", ADMIN, "bench-password-1", "system:bench")
    issued = await issue_token(
        store, clock, user, name="bench", expires_in_days=1, scopes=None, actor="system:bench"
    )
    return issued.token


async def run_store(name: str, tmp: Path) -> StoreResult:
    from zoneinfo import ZoneInfo

    result = StoreResult(name)
    ledger = sqlite_ledger(tmp) if name == "sqlite" else postgres_ledger(tmp)
    async with ledger as (store, db, env):
        await build(store, result)
        print(f"[{name}] built {result.events} events in {result.build_s:.0f}s", flush=True)
        count, seconds = await raw_read(store)
        result.raw_per_s = count / seconds
        print(f"[{name}] raw read: {count} events in {seconds:.1f}s ({result.raw_per_s:.0f}/s)")
        folded, seconds = await rebuild_all(store, db, ZoneInfo("UTC"))
        result.rebuild_per_s, result.rebuild_s = folded / seconds, seconds
        print(
            f"[{name}] rebuild: {folded} events folded in {seconds:.1f}s"
            f" ({result.rebuild_per_s:.0f}/s, ratio {result.ratio:.2f}); the ledger's"
            f" {result.events} events in {seconds:.1f}s is {result.events / seconds:.0f}/s,"
            f" {result.events / seconds / result.raw_per_s:.2f} of the raw read",
            flush=True,
        )
        token = await api_token(store)
        data_dir = tmp / f"{name}-data" if name != "sqlite" else tmp / "sqlite"
        data_dir.mkdir(exist_ok=True)
        port = free_port()
        env = {**env, "ISPBILL_DATA_DIR": str(data_dir), "ISPBILL_SECRETS_KEY": key()}
        proc = serve_api(env, port, data_dir)
        try:
            measure_queries(port, result, {"Authorization": f"Bearer {token}"})
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    for q in result.latencies:
        print(f"[{name}] {q}: p50 {result.pct(q, 0.5):.1f} ms, p99 {result.pct(q, 0.99):.1f} ms")
    return result


def key() -> str:
    from ispbill_core.sealing import new_key

    return new_key()


async def main() -> int:
    print(f"bench-reads on {machine()}; {CUSTOMERS} customers, {MONTHS} months of invoices")
    tmp = Path(tempfile.mkdtemp(prefix="ispbill-bench-reads-"))
    results: list[StoreResult] = []
    try:
        for name in STORES:
            results.append(await run_store(name, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in results:
        print(
            f"{r.store}: events={r.events} raw_read_per_s={r.raw_per_s:.0f}"
            f" rebuild_per_s={r.rebuild_per_s:.0f} ratio={r.ratio:.2f} "
            + " ".join(
                f"{q}_p50_ms={r.pct(q, 0.5):.1f} {q}_p99_ms={r.pct(q, 0.99):.1f}"
                for q in r.latencies
            )
        )
    last = results[-1]
    list_p99 = max(last.pct("invoice_list", 0.99), last.pct("customer_invoices", 0.99))
    print(
        f"RESULT reads rebuild_ratio={last.ratio:.2f}"
        f" search_p99_ms={last.pct('customer_search', 0.99):.1f}"
        f" invoice_list_p99_ms={list_p99:.1f} store={last.store}"
    )
    return 0


if __name__ == "__main__":
    _ = date  # the ledger's dates are built from datetimes
    sys.exit(asyncio.run(main()))
