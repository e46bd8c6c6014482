"""A bill run killed with SIGKILL at random points and resumed: one invoice per customer and
gapless numbers in the end; two runs at once, in two processes, give the same (issue 10).

The bill run runs in a process of its own (tests/e2e/bill_run_worker.py) on a SQLite ledger
of 2,000 customers, 50 at a time (chunks of 50, so that 20 kills find 20 different states); it
is SIGKILLed 20 times and started again each time: mostly a random moment after the series
has grown by a random number of invoices (so inside a chunk's reads, drafting or append as
often as between chunks), sometimes while it still reads its catalogue; the last start runs to
the end. Then every
customer has exactly one invoice, numbered 1..N without a gap, each number assigned once and to
the invoice that carries it.

Sizes: ISPBILL_BILLRUN_FAULT_CUSTOMERS (default 2,000), ISPBILL_BILLRUN_FAULT_KILLS (20),
ISPBILL_BILLRUN_FAULT_SEED (default: random, printed).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ispbill_core.contracts.accounts import (
    CustomerRegistered,
    PlanDefined,
    SubscriptionStarted,
    customer_stream,
    plan_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import (
    InvoiceIssued,
    InvoiceNumberAssigned,
    TaxRateSet,
    invoice_series_stream,
    invoice_stream,
    tax_region_stream,
)
from ispbill_core.events import DomainEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]

CUSTOMERS = int(os.environ.get("ISPBILL_BILLRUN_FAULT_CUSTOMERS", "2000"))
KILLS = int(os.environ.get("ISPBILL_BILLRUN_FAULT_KILLS", "20"))
SEED = int(
    os.environ.get("ISPBILL_BILLRUN_FAULT_SEED", str(random.SystemRandom().randrange(10**6)))
)
PERIOD = "2026-11"
CHUNK = 50
AT = datetime(2026, 11, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


async def seed(path: Path) -> None:
    store = SQLiteEventStore(path)

    def event(stream: str, e: DomainEvent) -> tuple[str, list, object]:
        return (
            stream,
            [new_event(e, id=deterministic_id("seed", stream), occurred_at=AT, actor="test")],
            NO_STREAM,
        )

    try:
        batches = [
            event(
                tax_region_stream("BD"),
                TaxRateSet(region="BD", tax_name="VAT", rate=Decimal("0.15")),
            ),
            event(
                plan_stream("home"),
                PlanDefined(
                    plan_id="home",
                    name="Home",
                    monthly_fee=Money.of("1000.00", "BDT"),
                    included_bytes=0,
                    overage_price=Money.of("10.00", "BDT"),
                ),
            ),
        ]
        for n in range(CUSTOMERS):
            cid = f"c-{n:05d}"
            batches.append(
                event(
                    customer_stream(cid),
                    CustomerRegistered(
                        customer_id=cid,
                        name=f"Customer {n}",
                        email=f"{cid}@example.com",
                        tax_region="BD",
                    ),
                )
            )
            batches.append(
                event(
                    subscription_stream(f"s-{cid}"),
                    SubscriptionStarted(
                        subscription_id=f"s-{cid}",
                        customer_id=cid,
                        plan_id="home",
                        radius_username=cid,
                        # every tenth starts mid-month: prorated
                        started_on=date(2026, 11, 16) if n % 10 == 0 else date(2026, 1, 1),
                    ),
                )
            )
        for at in range(0, len(batches), 500):
            await store.append_many(batches[at : at + 500])  # type: ignore[arg-type]
    finally:
        await store.close()


def start(path: Path, chunk: int = CHUNK) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.bill_run_worker", str(path), PERIOD, str(chunk)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def numbered(store: SQLiteEventStore) -> int:
    version = await store.stream_version(invoice_series_stream("INV"))
    return 0 if version is None else version + 1


async def assert_one_invoice_each_and_gapless(path: Path) -> None:
    store = SQLiteEventStore(path)
    try:
        invoices = await all_events_of(store, InvoiceIssued)
        assert sorted(i.customer_id for i in invoices) == [f"c-{n:05d}" for n in range(CUSTOMERS)]
        numbers = await all_events_of(store, InvoiceNumberAssigned)
        assert [n.sequence for n in numbers] == list(range(1, CUSTOMERS + 1))  # gapless
        assigned = {n.invoice_id: n.number for n in numbers}
        assert len(assigned) == CUSTOMERS  # each number to one invoice
        assert {i.invoice_id: i.number for i in invoices} == assigned
        for cid in ("c-00000", "c-00001", f"c-{CUSTOMERS - 1:05d}"):
            assert len(await store.read_stream(invoice_stream(cid, PERIOD))) == 1
        totals = {i.customer_id: i.total.amount for i in invoices}
        assert totals["c-00001"] == Decimal("1150.00")
        # 15 of 30 days of 1000.00, plus 15 % VAT
        assert totals["c-00000"] == Decimal("575.00")
    finally:
        await store.close()


async def test_a_bill_run_killed_twenty_times_ends_with_one_invoice_each_gapless(
    tmp_path: Path,
) -> None:
    print(f"ISPBILL_BILLRUN_FAULT_SEED={SEED}")
    rng = random.Random(SEED)
    ledger = tmp_path / "ledger.db"
    await seed(ledger)
    reader = SQLiteEventStore(ledger)
    kills = 0
    try:
        for _ in range(KILLS):
            before = await numbered(reader)
            if before >= CUSTOMERS:
                break
            worker = start(ledger)
            deadline = time.monotonic() + 300
            if rng.random() < 0.15:
                # while it reads its catalogue, before it numbers anything
                await asyncio.sleep(rng.uniform(0.05, 0.8))
            else:
                # up to one chunk on: at 1,100 invoices a second a run of 2,000 would end
                # before 20 kills if each let it go further
                target = before + rng.randint(1, CHUNK)
                while worker.poll() is None and time.monotonic() < deadline:
                    if await numbered(reader) >= target:
                        break
                    await asyncio.sleep(0.002)
                # a moment later: inside the next chunk's reads, drafting or append (a chunk
                # of 50 takes about 45 ms)
                await asyncio.sleep(rng.uniform(0, 0.03))
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
                kills += 1
            worker.wait(timeout=30)
            assert worker.returncode in (0, -signal.SIGKILL), (
                worker.stderr.read() if worker.stderr else ""
            )
        last = start(ledger)
        _out, err = last.communicate(timeout=600)
        assert last.returncode == 0, err
    finally:
        await reader.close()
    assert kills >= KILLS * 3 // 4, f"only {kills} kills landed before the run ended"
    await assert_one_invoice_each_and_gapless(ledger)


async def test_two_bill_runs_at_once_in_two_processes_give_the_result_of_one(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.db"
    await seed(ledger)
    first, second = start(ledger), start(ledger)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), outs
    issued = [int(out.split("issued=")[1].split()[0]) for out, _ in outs]
    assert sum(issued) == CUSTOMERS  # each invoice issued by exactly one of them
    await assert_one_invoice_each_and_gapless(ledger)
