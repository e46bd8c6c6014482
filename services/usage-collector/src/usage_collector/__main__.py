"""`python -m usage_collector`: the accounting server alone, on an embedded SQLite ledger."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ispbill_core.bus.ledger import LedgerPublisher
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.telemetry import setup_tracing
from usage_collector.bootstrap import RADIUS_ACCOUNTING_PORT, accounting_stream_for, bootstrap


async def run(args: argparse.Namespace) -> None:
    setup_tracing("ispbill-usage-collector")
    store = SQLiteEventStore(args.ledger)
    collector = bootstrap(
        store, LedgerPublisher(store, accounting_stream_for), host=args.host, port=args.port
    )
    await collector.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        while not stopped.is_set():
            try:
                await asyncio.wait_for(stopped.wait(), args.stats_interval)
            except TimeoutError:
                logging.info("counters %s", collector.accounting_server.counters.as_dict())
    finally:
        await collector.stop()
        await store.close()
        logging.info("final counters %s", collector.accounting_server.counters.as_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ledger", default="var/ispbill/ledger.db", help="SQLite ledger file")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104
    parser.add_argument("--port", type=int, default=RADIUS_ACCOUNTING_PORT)
    parser.add_argument("--stats-interval", type=float, default=60.0, help="seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
