"""A bill run in a process of its own, for the crash test: `python -m tests.e2e.bill_run_worker
LEDGER PERIOD [CHUNK]` closes PERIOD on the SQLite ledger LEDGER, as `POST /api/v1/bill-runs`
does (CHUNK customers at a time), and prints its report's counts."""

from __future__ import annotations

import asyncio
import sys
from zoneinfo import ZoneInfo

from invoicing.application.close_billing_period import close_billing_period
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import SystemClock
from ispbill_core.eventstore.sqlite import SQLiteEventStore


async def main(ledger: str, period: str, chunk: int = 0) -> None:
    store = SQLiteEventStore(ledger)
    try:
        report = await close_billing_period(
            store,
            SystemClock(),
            BillingSettings(timezone=ZoneInfo("Asia/Dhaka")),
            period,
            chunk=chunk,
        )
    finally:
        await store.close()
    print(
        f"issued={len(report.issued)} already={len(report.already_issued)}"
        f" skipped={len(report.skipped)} failed={len(report.failed)}",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
