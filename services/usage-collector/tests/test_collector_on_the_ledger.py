"""The collector as bootstrap wires it: NASes from the ledger, records onto the embedded bus."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import accounting_stream
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from usage_collector.bootstrap import accounting_stream_for, bootstrap
from usage_collector.testing import key_beside, register_nas

ledger_bus = pytest.importorskip("ispbill_core.bus.ledger")

pytestmark = pytest.mark.integration


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


async def test_a_nas_registered_in_the_ledger_is_served_and_retransmissions_land_once(
    tmp_path, requests
) -> None:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    keyring = key_beside(tmp_path / "ledger.db")
    await register_nas(store, keyring, secret=requests.secret)
    clock = FixedClock(requests.now)
    publisher = ledger_bus.LedgerPublisher(store, accounting_stream_for)
    collector = bootstrap(store, publisher, keyring=keyring, host="127.0.0.1", port=0, clock=clock)
    await collector.start()
    receiver = _Receiver()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: receiver, remote_addr=collector.accounting_server.address
    )
    try:
        transport.sendto(requests.start(id=1))
        assert await asyncio.wait_for(receiver.replies.get(), 5)
        clock.advance(timedelta(seconds=2))
        transport.sendto(requests.start(id=2, Acct_Delay_Time=2))
        assert await asyncio.wait_for(receiver.replies.get(), 5)
    finally:
        transport.close()
        await collector.stop()
    recorded = await store.read_stream(accounting_stream("nas-1"))
    assert len(recorded) == 1
    assert recorded[0].type == "AccountingRecordReceived"
    assert recorded[0].data["acct_session_id"] == "sess-1"
    assert recorded[0].metadata.occurred_at == requests.now
    await store.close()
