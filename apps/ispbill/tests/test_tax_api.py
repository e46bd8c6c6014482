"""Tax rules through the API and a bill run (ADR 0029): region levels, a compound VAT on a
supplementary duty, a tax-inclusive plan, an exempt customer, and a customer whose region has
no rule in force reported, not invoiced untaxed. Golden figures worked out by hand."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services
from ispbill_core.contracts.invoicing import tax_region_stream
from ispbill_core.sealing import KEY_ENV
from tests.fixtures.embedded import api_client, embedded_services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NOW = datetime(2026, 3, 10, 9, tzinfo=UTC)


@pytest.fixture
async def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    async with embedded_services(tmp_path / "data", NOW) as services:
        yield services


@pytest.fixture
async def api(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(services) as client:
        yield client


async def call(api: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await api.request(method, f"/api/v1{path}", json=body)
    assert response.status_code < 300, response.text
    return response.json()


def vat_of(seen: dict[str, Any]) -> str:
    return next(r["rate"] for r in seen["rules"] if r["tax_code"] == "VAT")


def rule(region: str, code: str, rate: str, **extra: Any) -> dict[str, Any]:
    return {
        "region": region,
        "tax_code": code,
        "name": {"VAT": "VAT", "SD": "Supplementary duty"}.get(code, code),
        "rate": rate,
        "effective_from": "2020-01-01",
        **extra,
    }


async def test_rules_of_every_level_exemptions_and_inclusive_prices_in_a_bill_run(
    services: Services, api: httpx.AsyncClient
) -> None:
    # VAT on the country, compounded on the duty Dhaka adds; Chattogram's own VAT rate
    await call(api, "POST", "/tax-rules", rule("BD", "VAT", "0.15", compound=True, sequence=1))
    await call(api, "POST", "/tax-rules", rule("BD.dhaka", "SD", "0.10"))
    await call(api, "POST", "/tax-rules", rule("BD.ctg", "VAT", "0.075"))
    # a region whose first rule only starts next year
    await call(
        api, "POST", "/tax-rules", {**rule("LATE", "VAT", "0.15"), "effective_from": "2027-01-01"}
    )
    for plan_id, fee, inclusive in (("home", "1000.00", False), ("home-incl", "1265.00", True)):
        await call(
            api,
            "POST",
            "/plans",
            {
                "plan_id": plan_id,
                "name": plan_id,
                "currency": "BDT",
                "monthly_fee": fee,
                "included_gb": 100,
                "overage_per_gb": "10.00",
                "prices_include_tax": inclusive,
            },
        )
    customers = {
        "c-1": ("BD.dhaka.gulshan", "home"),
        "c-2": ("BD.dhaka", "home-incl"),
        "c-3": ("BD.ctg", "home"),
        "c-4": ("BD.dhaka", "home"),
        "c-5": ("LATE", "home"),
    }
    for customer_id, (region, plan_id) in customers.items():
        await call(
            api,
            "POST",
            "/customers",
            {
                "customer_id": customer_id,
                "name": customer_id,
                "email": f"{customer_id}@example.com",
                "tax_region": region,
            },
        )
        await call(
            api,
            "POST",
            "/subscriptions",
            {
                "subscription_id": f"s-{customer_id}",
                "customer_id": customer_id,
                "plan_id": plan_id,
                "radius_username": f"u-{customer_id}",
                "started_on": "2026-01-01",
            },
        )
    await call(
        api,
        "POST",
        "/customers/c-4/tax-exemptions",
        {"certificate": "NBR/EX/2026/42", "tax_codes": ["VAT"], "valid_from": "2026-01-01"},
    )
    # dates the wrong way round, a control character in the certificate: refused, not recorded
    for bad in (
        {"certificate": "X-2", "valid_from": "2026-03-01", "valid_until": "2026-02-01"},
        {"certificate": "X\u0000-3", "valid_from": "2026-01-01"},
        {"certificate": "X-4", "valid_from": "0000-01-01"},
        {"certificate": "X-5", "valid_from": "2026-01-01", "tax_codes": ["V A T"]},
    ):
        refused = await api.post("/api/v1/customers/c-4/tax-exemptions", json=bad)
        assert refused.status_code == 422, refused.text
    exemption_stream = await services.store.read_stream("tax-exemption-c-4")
    assert len(exemption_stream) == 1
    # what a clerk sees before billing
    seen = await call(api, "GET", "/tax-rules?region=BD.dhaka.gulshan&on=2026-02-28")
    assert [(r["tax_code"], r["rate"], r["region"]) for r in seen["rules"]] == [
        ("SD", "0.10", "BD.dhaka"),
        ("VAT", "0.15", "BD"),
    ]
    assert (await call(api, "GET", "/tax-rules?region=LATE&on=2026-02-28"))["rules"] == []
    exemptions = await call(api, "GET", "/customers/c-4/tax-exemptions?on=2026-02-28")
    assert [e["certificate"] for e in exemptions] == ["NBR/EX/2026/42"]
    assert await api.projector.catch_up(timeout=20)  # type: ignore[attr-defined]

    report = await call(api, "POST", "/bill-runs", {"period": "2026-02"})
    assert len(report["issued"]) == 4
    assert list(report["skipped"]) == ["c-5"]
    assert "no tax rule in force for region 'LATE' on 2026-02-28" in report["skipped"]["c-5"]

    invoices = {i["customer_id"]: i for i in await call(api, "GET", "/invoices?period=2026-02")}
    assert set(invoices) == {"c-1", "c-2", "c-3", "c-4"}

    def taxes(customer_id: str) -> list[tuple[str, str, str, str | None]]:
        return [
            (
                t["tax_code"],
                t["taxable"]["amount"],
                t["amount"]["amount"],
                t["exemption_certificate"],
            )
            for t in invoices[customer_id]["taxes"]
        ]

    # SD 10 % of 1000; VAT 15 % of 1100
    assert taxes("c-1") == [("SD", "1000.00", "100.00", None), ("VAT", "1100.00", "165.00", None)]
    assert invoices["c-1"]["total"]["amount"] == "1265.00"
    # the same taxes taken out of a price of 1265.00: the customer pays the price
    assert taxes("c-2") == taxes("c-1")
    line = invoices["c-2"]["lines"][0]
    assert (line["amount"]["amount"], line["gross_amount"]["amount"], line["tax_inclusive"]) == (
        "1000.00",
        "1265.00",
        True,
    )
    assert invoices["c-2"]["total"]["amount"] == "1265.00"
    # Chattogram's VAT replaces the country's; no duty there
    assert taxes("c-3") == [("VAT", "1000.00", "75.00", None)]
    assert invoices["c-3"]["taxes"][0]["region"] == "BD.ctg"
    # exempt from VAT, not from the duty; the certificate is on the invoice
    assert taxes("c-4") == [
        ("SD", "1000.00", "100.00", None),
        ("VAT", "1100.00", "0.00", "NBR/EX/2026/42"),
    ]
    assert invoices["c-4"]["total"]["amount"] == "1100.00"
    pdf = await api.get(f"/api/v1/invoices/{invoices['c-4']['number']}/pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    # the period's tax per customer region, jurisdiction and rate
    rows = await call(api, "GET", "/reports/tax?period=2026-02")
    assert [
        (
            r["customer_region"],
            r["jurisdiction"],
            r["tax_code"],
            r["rate"],
            r["invoices"],
            r["taxable"],
            r["tax"],
            r["exempt_taxable"],
        )
        for r in rows
    ] == [
        ("BD.ctg", "BD.ctg", "VAT", "0.075", 1, "1000.00", "75.00", "0.00"),
        ("BD.dhaka", "BD", "VAT", "0.15", 2, "1100.00", "165.00", "1100.00"),
        ("BD.dhaka", "BD.dhaka", "SD", "0.10", 2, "2000.00", "200.00", "0.00"),
        ("BD.dhaka.gulshan", "BD", "VAT", "0.15", 1, "1100.00", "165.00", "0.00"),
        ("BD.dhaka.gulshan", "BD.dhaka", "SD", "0.10", 1, "1000.00", "100.00", "0.00"),
    ]
    csv_ = await api.get("/api/v1/reports/tax", params={"period": "2026-02", "format": "csv"})
    assert csv_.headers["content-type"].startswith("text/csv")
    lines = csv_.text.split("\r\n")
    assert lines[0] == (
        "period,currency,customer_region,jurisdiction,tax_code,tax_name,rate,invoices,"
        "credit_notes,taxable,tax,exempt_taxable"
    )
    assert lines[1] == "2026-02,BDT,BD.ctg,BD.ctg,VAT,VAT,0.075,1,0,1000.00,75.00,0.00"
    assert len(lines) == 7 and lines[-1] == ""


async def test_rule_writes_are_idempotent_dated_and_checked(
    services: Services, api: httpx.AsyncClient
) -> None:
    vat = rule("BD", "VAT", "0.15")
    await call(api, "POST", "/tax-rules", vat)
    await call(api, "POST", "/tax-rules", vat)  # a retry: nothing more recorded
    assert await services.store.stream_version(tax_region_stream("BD")) == 0
    # while no invoice exists (setting up), a rule may be dated in the past
    await call(api, "POST", "/tax-rules", rule("BD", "SD", "0.05"))
    await an_invoice_is_issued(services)
    # once one is, a change dated before this month (March 2026) could change it: refused,
    # a new level's first rule too
    for body in (
        {**vat, "rate": "0.16", "effective_from": "2026-02-01"},
        rule("BD.dhaka", "SD", "0.02"),
    ):
        back = await api.post("/api/v1/tax-rules", json=body)
        assert back.status_code == 422, back.text
        assert back.headers["content-type"].startswith("application/problem+json")
        assert "before this month" in back.json()["detail"]
    # from next month: recorded, and in force from that day only
    await call(api, "POST", "/tax-rules", {**vat, "rate": "0.16", "effective_from": "2026-04-01"})
    march = await call(api, "GET", "/tax-rules?region=BD&on=2026-03-31")
    april = await call(api, "GET", "/tax-rules?region=BD&on=2026-04-01")
    assert (vat_of(march), vat_of(april)) == ("0.15", "0.16")
    # set back to 0.15 from April: a third event, not a retry of the first
    await call(api, "POST", "/tax-rules", {**vat, "effective_from": "2026-04-01"})
    april = await call(api, "GET", "/tax-rules?region=BD&on=2026-04-01")
    assert vat_of(april) == "0.15"
    # ending a code the level never had
    missing = await api.post(
        "/api/v1/tax-rules/end",
        json={"region": "BD", "tax_code": "GST", "effective_from": "2026-04-01"},
    )
    assert missing.status_code == 404, missing.text
    await call(
        api,
        "POST",
        "/tax-rules/end",
        {"region": "BD", "tax_code": "VAT", "effective_from": "2026-05-01"},
    )
    may = await call(api, "GET", "/tax-rules?region=BD&on=2026-05-01")
    assert [r["tax_code"] for r in may["rules"]] == ["SD"]
    # an exemption of a customer that does not exist
    nobody = await api.post(
        "/api/v1/customers/nobody/tax-exemptions",
        json={"certificate": "X-1", "valid_from": "2026-01-01"},
    )
    assert nobody.status_code == 404, nobody.text


async def an_invoice_is_issued(services: Services) -> None:
    """An invoice in the ledger (as a bill run records one), for the rules on backdating."""
    from datetime import date

    from ispbill_core.contracts.invoicing import InvoiceIssued, invoice_stream
    from ispbill_core.events import new_event
    from ispbill_core.eventstore import NO_STREAM
    from ispbill_core.money import Money

    zero = Money.zero("BDT")
    invoice = InvoiceIssued(
        invoice_id=uuid.uuid4(),
        number="INV-000001",
        customer_id="c-0",
        customer_name="C",
        customer_email="c@example.com",
        period="2026-02",
        issued_at=NOW,
        due_on=date(2026, 3, 24),
        currency="BDT",
        lines=(),
        subtotal=zero,
        taxes=(),
        tax_total=zero,
        total=zero,
    )
    await services.store.append(
        invoice_stream("c-0", "2026-02"),
        [new_event(invoice, id=invoice.invoice_id, occurred_at=NOW)],
        NO_STREAM,
    )


async def test_a_level_moves_from_a_simple_rate_to_dated_rules_without_paying_both(
    services: Services, api: httpx.AsyncClient
) -> None:
    await call(api, "POST", "/tax-rates", {"region": "BD", "tax_name": "VAT", "rate": "0.15"})
    await an_invoice_is_issued(services)
    await call(
        api, "POST", "/tax-rules", {**rule("BD", "VAT", "0.16"), "effective_from": "2026-04-01"}
    )
    both = await call(api, "GET", "/tax-rules?region=BD&on=2026-04-01")
    assert [r["tax_code"] for r in both["rules"]] == ["VAT", "rate"]  # both, until it ends
    await call(
        api,
        "POST",
        "/tax-rules/end",
        {"region": "BD", "tax_code": "rate", "effective_from": "2026-04-01"},
    )
    march = await call(api, "GET", "/tax-rules?region=BD&on=2026-03-31")
    april = await call(api, "GET", "/tax-rules?region=BD&on=2026-04-01")
    assert [(r["tax_code"], r["rate"]) for r in march["rules"]] == [("rate", "0.15")]
    assert [(r["tax_code"], r["rate"]) for r in april["rules"]] == [("VAT", "0.16")]


@pytest.mark.parametrize(
    "body",
    [
        {"region": "BD."},
        {"region": "BD..dhaka"},
        {"region": ".BD"},
        {"region": "x" * 65},
        {"rate": "1.5"},
        {"rate": "-0.1"},
        {"rate": 0.15},
        {"tax_code": "V A T"},
        {"tax_code": "x" * 40},
        {"region": "BD/dhaka"},
        {"name": "VAT\u202e"},
        {"name": "VAT\n"},
        {"effective_from": "0000-01-01"},
        {"effective_from": "9999-12-31"},
        {"sequence": 10**9},
        {"compound": "maybe"},
        {"surprise": 1},
    ],
)
async def test_bad_rules_are_refused_at_the_edge_and_nothing_is_written(
    services: Services, api: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await api.post("/api/v1/tax-rules", json={**rule("BD", "VAT", "0.15"), **body})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await services.store.stream_version(tax_region_stream("BD")) is None


async def test_a_customer_in_a_level_below_a_rule_can_be_registered_one_elsewhere_cannot(
    services: Services, api: httpx.AsyncClient
) -> None:
    await call(api, "POST", "/tax-rules", rule("BD", "VAT", "0.15"))
    body = {"customer_id": "c-1", "name": "A", "email": "a@example.com"}
    ok = await api.post("/api/v1/customers", json={**body, "tax_region": "BD.sylhet.zindabazar"})
    assert ok.status_code == 201, ok.text
    refused = await api.post(
        "/api/v1/customers", json={**body, "customer_id": "c-2", "tax_region": "BDX"}
    )
    assert refused.status_code == 422, refused.text
    # an empty level is no level: refused at the edge, not taxed at "BD" only
    empty = await api.post(
        "/api/v1/customers", json={**body, "customer_id": "c-3", "tax_region": "BD..gulshan"}
    )
    assert empty.status_code == 422, empty.text
