"""Regression: one bad event used to stop payment allocation or e-mail for good, even across
restarts (a payment of 10^26; a customer name with a line break). Now it is parked, listed on
the API, retried and discarded, and every other payment and e-mail still goes through."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services, open_ledger
from ispbill_app.settings import Settings
from ispbill_core.contracts.invoicing import InvoiceIssued, invoice_stream
from ispbill_core.contracts.payments import PaymentReceived, payment_stream
from ispbill_core.events import EventMetadata, NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.money import Money
from tests.fixtures.staff import staff_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AT = datetime(2026, 4, 1, tzinfo=UTC)


def invoice(customer_id: str, name: str, total: str = "30.00") -> InvoiceIssued:
    return InvoiceIssued(
        invoice_id=deterministic_id("invoice", customer_id, "2026-03"),
        number=f"INV-{customer_id}",
        customer_id=customer_id,
        customer_name=name,
        customer_email=f"{customer_id}@example.com",
        period="2026-03",
        issued_at=AT,
        due_on=date(2026, 4, 15),
        currency="USD",
        lines=(),
        subtotal=Money.of(total, "USD"),
        taxes=(),
        tax_total=Money.of("0", "USD"),
        total=Money.of(total, "USD"),
    )


def payment_data(customer_id: str, ref: str, amount: str) -> dict[str, Any]:
    """As PaymentReceived dumps it; built by hand so that a bad amount can get past pydantic,
    as it could through an older version or another writer of the ledger."""
    return {
        "payment_id": str(deterministic_id("payment", "manual", ref)),
        "gateway": "manual",
        "transaction_ref": ref,
        "customer_id": customer_id,
        "invoice_id": str(deterministic_id("invoice", customer_id, "2026-03")),
        "amount": {"amount": amount, "currency": "USD"},
        "received_at": AT.isoformat(),
        "method": "cash",
        "invoice_period": "2026-03",
    }


class Running:
    def __init__(self, services: Services, tasks: list[asyncio.Task[Any]], token: str) -> None:
        self.services = services
        self.tasks = tasks
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=services.http_app()),
            base_url="http://api",
            headers={"Authorization": f"Bearer {token}"},
        )

    async def wait_for(self, probe: Any, what: str, timeout: float = 20.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = await probe()
                if value:
                    return value
                await asyncio.sleep(0.05)
        raise AssertionError(what)  # pragma: no cover


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    settings = Settings(data_dir=tmp_path / "data", ledger="sqlite")
    settings.data_dir.mkdir()
    services = Services(settings, None)
    services.require_keyring()
    services.store = await open_ledger(settings)
    await services.open_read_models(run_projections=True)
    assert services.projector is not None
    runners = [
        services.projector.run,
        services.allocation_subscriber().run,
        services.notifier_subscriber().run,
    ]
    tasks = [asyncio.create_task(r()) for r in runners]
    try:
        yield Running(services, tasks, await staff_token(services.store))
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await services.require_read_models().close()
        await services.store.close()


async def put(services: Services, stream: str, type_: str, data: dict[str, Any]) -> None:
    await services.store.append(
        stream,
        [
            NewEvent(
                id=uuid.uuid4(),
                type=type_,
                version=1,
                data=data,
                metadata=EventMetadata(occurred_at=AT, actor="staff:test"),
            )
        ],
        NO_STREAM,
    )


async def test_poison_payment_and_poison_name_are_parked_and_the_rest_goes_through(
    running: Running,
) -> None:
    services, api = running.services, running.client
    for customer_id, name in [("c-1", "Alice"), ("c-2", "Mallory\r\nBcc: all@example.com")]:
        issued = invoice(customer_id, name)
        await services.store.append(
            invoice_stream(customer_id, "2026-03"),
            [new_event(issued, id=deterministic_id("issued", customer_id), occurred_at=AT)],
            NO_STREAM,
        )
    # a payment of 10^26 before a good one
    await put(
        services,
        payment_stream("manual", "huge"),
        PaymentReceived.event_type,
        payment_data("c-1", "huge", "1" + "0" * 26),
    )
    await put(
        services,
        payment_stream("manual", "good"),
        PaymentReceived.event_type,
        payment_data("c-1", "good", "30.00"),
    )

    async def invoice_status() -> Any:
        found = await api.get("/api/v1/invoices/INV-c-1")
        return found.json()["status"] == "paid" and found

    await running.wait_for(invoice_status, "the good payment to pay the invoice")

    async def all_parked() -> Any:
        parked = (await api.get("/api/v1/parked")).json()
        return len(parked) == 3 and parked

    # the payments list's projection cannot fold the huge payment either
    parked = await running.wait_for(all_parked, "three parked events")
    by_consumer = {p["consumer"]: p for p in parked}
    assert set(by_consumer) == {
        "invoicing.allocate-payments",
        "payments.payments",
        "notifier.email-invoices",
    }
    assert "InvalidOperation" in by_consumer["invoicing.allocate-payments"]["reason"]
    assert "linefeed" in by_consumer["notifier.email-invoices"]["reason"]
    # Alice's e-mail went out; the poison one did not stop it
    outbox = list((services.settings.data_dir / "outbox").glob("*.eml"))
    assert len(outbox) == 1 and b"Alice" in outbox[0].read_bytes()

    shown = (await api.get(f"/api/v1/parked/{by_consumer['notifier.email-invoices']['id']}")).json()
    assert shown["event"]["data"]["customer_name"].startswith("Mallory")

    # retried while still bad: parked again, one more attempt
    poison_payment = by_consumer["invoicing.allocate-payments"]["id"]
    retried = await api.post(f"/api/v1/parked/{poison_payment}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "retry"

    async def parked_again() -> Any:
        entry = (await api.get(f"/api/v1/parked/{poison_payment}")).json()
        return entry["status"] == "parked" and entry["attempts"] == 2 and entry

    await running.wait_for(parked_again, "the retried payment to be parked again")

    discarded = await api.post(
        f"/api/v1/parked/{poison_payment}/discard", json={"reason": "typo, re-entered"}
    )
    assert discarded.json()["status"] == "discarded"
    assert sorted(p["consumer"] for p in (await api.get("/api/v1/parked")).json()) == [
        "notifier.email-invoices",
        "payments.payments",
    ]
    # the good payment is listed; the huge one is not (it is parked)
    listed = (await api.get("/api/v1/payments", params={"customer_id": "c-1"})).json()
    assert [p["transaction_ref"] for p in listed] == ["good"]
    assert (await api.post("/api/v1/parked/999999/retry")).status_code == 404
