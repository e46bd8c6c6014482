"""The thin-path scenario both runtimes must pass, driven only through public interfaces."""

from __future__ import annotations

import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pypdf import PdfReader

from ispbill_app.demo import DEMO_NAS_SECRET
from ispbill_core.telemetry import read_spans
from tests.e2e.harness import (
    GB,
    WATCHED_PIDS,
    Ispbill,
    dump_stacks,
    radclient,
    send_accounting_from,
    session_packets,
    wait_until,
)
from tests.fixtures.smtp import Mailbox


def usage_of(api: Ispbill, customer: str, period: str) -> int:
    return int(api.get(f"/api/v1/usage/{customer}/{period}")["total_octets"])


def run_thin_path(api: Ispbill, radius_port: int, mailbox: Mailbox) -> dict[str, Any]:
    # Bob's plan (home-25): 25.00 a month, 20 GB included, 2.00 per started GB; rural VAT 5%.
    started = int(time.time()) - 3600
    period = datetime.fromtimestamp(started, UTC).strftime("%Y-%m")
    down, up = 15 * GB + 123_456_789, 8 * GB + 500_000_000  # over 2**32: needs Gigawords
    packets = session_packets("bob", "e2e-0001", [(5 * GB, 1 * GB), (down, up)], started_at=started)
    radclient(radius_port, DEMO_NAS_SECRET, packets)
    # A retransmission of the Stop: acknowledged again, counted once.
    radclient(radius_port, DEMO_NAS_SECRET, packets[-1:])
    wait_until(lambda: usage_of(api, "C1002", period) == down + up, what="bob's rated usage")

    report = api.cli_json("bill-run", "--period", period)
    assert len(report["issued"]) == 3  # alice, bob, carol
    invoices = api.cli_json("invoices", "list", "--customer", "C1002", "--period", period)
    assert len(invoices) == 1
    invoice = invoices[0]
    # 23.623456789 GB used, 20 included: 3.62... -> 4 started GB at 2.00 = 8.00
    lines = {line["kind"]: line for line in invoice["lines"]}
    assert lines["recurring"]["amount"]["amount"] == "25.00"
    assert lines["usage"]["quantity"] in ("4", "4.0", "4.00")
    assert lines["usage"]["amount"]["amount"] == "8.00"
    assert invoice["subtotal"]["amount"] == "33.00"
    assert [(t["tax_name"], t["amount"]["amount"]) for t in invoice["taxes"]] == [("VAT", "1.65")]
    assert invoice["total"]["amount"] == "34.65"
    assert invoice["status"] == "issued"

    # Again, and twice at once: still exactly one invoice per customer.
    again = api.cli_json("bill-run", "--period", period)
    assert again["issued"] == [] and len(again["already_issued"]) == 3
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: api.cli_json("bill-run", "--period", period), range(2)))
    assert all(r["issued"] == [] for r in runs)
    everything = api.cli_json("invoices", "list", "--period", period)
    assert sorted(i["customer_id"] for i in everything) == ["C1001", "C1002", "C1003"]
    numbers = sorted(i["number"] for i in everything)
    assert numbers == ["INV-000001", "INV-000002", "INV-000003"]  # gapless

    mail = mailbox.wait_for("bob@example.net")
    assert invoice["number"] in str(mail["Subject"])
    attachments = [p for p in mail.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert len(attachments) == 1
    pdf_text = "".join(
        page.extract_text() for page in PdfReader(io.BytesIO(attachments[0].get_content())).pages
    )
    assert invoice["number"] in pdf_text and "34.65" in pdf_text

    table = api.cli("invoices", "show", invoice["number"]).stdout
    assert "34.65" in table and "Bob Chowdhury" in table
    paid = api.cli_json(
        "payments",
        "record",
        "--invoice",
        invoice["number"],
        "--amount",
        "34.65",
        "--reference",
        "RCPT-77",
    )
    # The same receipt entered twice records one payment.
    assert (
        api.cli_json(
            "payments",
            "record",
            "--invoice",
            invoice["number"],
            "--amount",
            "34.65",
            "--reference",
            "RCPT-77",
        )["payment_id"]
        == paid["payment_id"]
    )
    wait_until(
        lambda: api.cli_json("invoices", "show", invoice["number"])["status"] == "paid",
        what="the invoice to be marked paid",
    )
    return invoice


def assert_one_trace_links_packet_to_line(trace_files: list[Path], invoice_number: str) -> None:
    spans = [s for f in trace_files if f.exists() for s in read_spans(str(f))]
    packet_traces = {
        s["context"]["trace_id"]
        for s in spans
        if s["name"] == "radius.accounting"
        and s["attributes"].get("radius.acct_session_id") == "e2e-0001"
    }
    rating_traces = {
        s["context"]["trace_id"] for s in spans if s["name"] == "rating.rate_accounting_record"
    }
    assert packet_traces & rating_traces, "rating did not continue the packet's trace"
    usage_lines = [
        s
        for s in spans
        if s["name"] == "invoicing.invoice_line"
        and s["attributes"].get("invoice.number") == invoice_number
        and s["attributes"].get("invoice.line.kind") == "usage"
    ]
    assert len(usage_lines) == 1
    linked = {link["context"]["trace_id"] for link in usage_lines[0]["links"]}
    assert linked and linked <= packet_traces & rating_traces, (linked, packet_traces)


def assert_bad_packets_dropped_and_counted(
    api: Ispbill, counters_path: str, radius_port: int
) -> None:
    """A wrong secret and an unknown NAS are dropped and counted; valid packets still flow."""
    before = api.get(counters_path)
    probe = {
        "User-Name": "alice",
        "Acct-Session-Id": "bad-1",
        "Acct-Status-Type": "Start",
        "NAS-IP-Address": "127.0.0.1",
    }
    assert send_accounting_from("127.0.0.1", radius_port, "not-the-secret", probe) is None
    assert send_accounting_from("127.0.0.2", radius_port, DEMO_NAS_SECRET, probe) is None
    wait_until(
        lambda: (
            (c := api.get(counters_path))["dropped_bad_authenticator"]
            > before["dropped_bad_authenticator"]
            and c["dropped_unknown_nas"] > before["dropped_unknown_nas"]
        ),
        what="the drop counters",
    )
    # Per source: the NAS with the wrong secret, and the router nobody registered.
    drops = api.get(counters_path.replace("/counters", "/drops"))
    assert drops["127.0.0.1"]["nas_id"] == "nas-demo-1", drops
    assert drops["127.0.0.1"]["reasons"]["dropped_bad_authenticator"] >= 1, drops
    assert drops["127.0.0.2"]["nas_id"] is None, drops
    assert drops["127.0.0.2"]["reasons"]["dropped_unknown_nas"] >= 1, drops
    table = api.cli("collector", "drops").stdout
    assert "127.0.0.2  (not registered)" in table and "unknown_nas" in table, table
    good = {**probe, "Acct-Session-Id": "good-1"}
    # Like a NAS, retransmit until answered: the ack waits for a durable write.
    reply = None
    for attempt in range(5):
        reply = send_accounting_from("127.0.0.1", radius_port, DEMO_NAS_SECRET, good, 3.0)
        if reply is not None:
            break
        if attempt == 1:
            for pid in WATCHED_PIDS:
                print(f"--- no Accounting-Response in 6 s: stacks of pid {pid} ---")
                print(dump_stacks(pid))
    assert reply is not None and reply[0] == 5  # Accounting-Response


def assert_a_nas_secret_change_takes_effect(api: Ispbill, radius_port: int) -> str:
    """The demo NAS is shown without its secret, sealed; a new secret given through the API is
    taken up by the collector live (it opens it with its key), and the old one is refused."""
    [nas] = [n for n in api.get("/api/v1/nas") if n["nas_id"] == "nas-demo-1"]
    assert nas["secret_storage"] == "sealed", nas
    assert not {"secret", "secret_sealed"} & set(nas), nas
    new_secret = f"rotated-{uuid.uuid4().hex[:12]}"
    details = {k: nas[k] for k in ("name", "ip_address", "vendor", "require_message_authenticator")}
    changed = api.put("/api/v1/nas/nas-demo-1", {**details, "secret": new_secret})
    assert changed["secret_storage"] == "sealed" and new_secret not in str(changed)
    probe = {
        "User-Name": "alice",
        "Acct-Session-Id": f"rekey-{uuid.uuid4().hex[:8]}",
        "Acct-Status-Type": "Start",
        "NAS-IP-Address": "127.0.0.1",
    }
    wait_until(
        lambda: send_accounting_from("127.0.0.1", radius_port, new_secret, probe, 1.0),
        what="an Accounting-Response to the NAS's new secret",
    )
    assert send_accounting_from("127.0.0.1", radius_port, DEMO_NAS_SECRET, probe, 1.0) is None
    return new_secret


def assert_a_removed_nas_is_refused(api: Ispbill, radius_port: int, secret: str) -> None:
    """Taken out of service through the API, the NAS's accounting goes unanswered."""
    response = httpx.delete(
        f"{api.server}/api/v1/nas/nas-demo-1", timeout=10, headers=api.headers()
    )
    assert response.status_code == 200, response.text
    probe = {
        "User-Name": "alice",
        "Acct-Session-Id": f"removed-{uuid.uuid4().hex[:8]}",
        "Acct-Status-Type": "Start",
        "NAS-IP-Address": "127.0.0.1",
    }
    wait_until(
        lambda: send_accounting_from("127.0.0.1", radius_port, secret, probe, 0.5) is None,
        what="no Accounting-Response for a removed NAS",
    )
    assert api.get("/api/v1/nas") == []


def assert_usage_before_a_subscription_is_rated_once_it_starts(
    api: Ispbill, radius_port: int, customer: str = "C1001"
) -> None:
    """A router already carries dave's sessions; the clerk records his subscription later: the
    usage waits, listed, and is rated into the customer's period once the subscription starts."""
    started = int(time.time()) - 3600
    when = datetime.fromtimestamp(started, UTC)
    period = when.strftime("%Y-%m")
    before = usage_of(api, customer, period)
    packets = session_packets("dave", "e2e-dave", [(2 * GB, 1 * GB)], started_at=started)
    radclient(radius_port, DEMO_NAS_SECRET, packets)
    [waiting] = wait_until(lambda: api.get("/api/v1/usage/unmatched"), what="dave's usage")
    assert (waiting["username"], waiting["total_octets"]) == ("dave", 3 * GB)
    listed = api.cli("usage", "unmatched").stdout
    assert "dave" in listed and str(3 * GB) in listed, listed
    api.post(
        "/api/v1/subscriptions",
        {
            "subscription_id": "S2001",
            "customer_id": customer,
            "plan_id": "home-25",
            "radius_username": "dave",
            "started_on": when.date().isoformat(),
        },
    )
    wait_until(
        lambda: usage_of(api, customer, period) == before + 3 * GB, what="dave's usage rated"
    )
    assert api.get("/api/v1/usage/unmatched") == []


def assert_a_session_is_split_by_band_and_reaches_its_thresholds(
    api: Ispbill, radius_port: int, customer: str = "C1003"
) -> None:
    """A plan with 1 GB included and an evening band from the next full hour (the server's
    time zone is UTC): erin's session crosses the band's start, so its first delta is split
    in two buckets by time, and 1.8 GB used passes 80 % and 100 % of the quota, each once."""
    started = int(time.time()) - 2 * 3600
    when = datetime.fromtimestamp(started, UTC)
    period = when.strftime("%Y-%m")
    edge = (when + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    api.post(
        "/api/v1/plans",
        {
            "plan_id": "e2e-bands",
            "name": "E2E bands",
            "currency": "USD",
            "monthly_fee": "10.00",
            "included_gb": 1,
            "overage_per_gb": "1.00",
        },
    )
    api.post(
        "/api/v1/plans/e2e-bands/versions",
        {
            "effective_from": when.date().replace(day=1).isoformat(),
            "name": "E2E bands",
            "currency": "USD",
            "monthly_fee": "10.00",
            "included_units": 1,
            "overage_price": "1.00",
            "time_bands": [
                {
                    "name": "evening",
                    "start": edge.strftime("%H:%M"),
                    "end": (edge + timedelta(hours=6)).strftime("%H:%M"),
                    "multiplier": "1",
                }
            ],
        },
    )
    api.post(
        "/api/v1/subscriptions",
        {
            "subscription_id": "S3001",
            "customer_id": customer,
            "plan_id": "e2e-bands",
            "radius_username": "erin",
            "started_on": when.date().replace(day=1).isoformat(),
        },
    )
    first = (600_000_000, 100_000_000)  # (down, up) in the first hour: crosses the band's start
    total = (1_500_000_000, 300_000_000)
    packets = session_packets("erin", "e2e-erin", [first, total], started_at=started, step=3600)
    radclient(radius_port, DEMO_NAS_SECRET, packets)

    def erins() -> dict[str, Any] | None:
        usage = api.get(f"/api/v1/usage/{customer}/{period}/buckets")
        found = [s for s in usage["subscriptions"] if s["subscription_id"] == "S3001"]
        return found[0] if found and found[0]["total_octets"] == sum(total) else None

    subscription = wait_until(erins, what="erin's usage in its buckets")
    bands = {b["band"]: b for b in subscription["buckets"]}
    assert set(bands) == {"", "evening"}, bands
    # the first delta is shared by time: (edge - start) of its hour before the band
    before = int((edge - when).total_seconds())
    # down is the NAS's output to the subscriber, up its input
    assert bands[""]["output_octets"] == first[0] * before // 3600, bands
    assert bands[""]["input_octets"] == first[1] * before // 3600, bands
    assert bands[""]["output_octets"] + bands["evening"]["output_octets"] == total[0]
    assert all(b["plan_version"] == 2 for b in bands.values())
    reached = wait_until(
        lambda: (
            r
            if len(r := api.get(f"/api/v1/subscriptions/S3001/thresholds/{period}")) == 2
            else None
        ),
        what="erin's quota thresholds",
    )
    assert [(r["percent"], r["allowance_octets"]) for r in reached] == [
        (80, 10**9),
        (100, 10**9),
    ]


def assert_a_clerks_changes_are_read_back_and_audited(api: Ispbill) -> None:
    """Through the CLI, as a clerk: a customer's details and a suspension show in the lists at
    once (the projections), with who did it in the audit trail; nothing is parked and every
    projection has caught up."""
    api.cli("customers", "change", "C1003", "--tag", "vip", "--phone", "+8801712345678")
    api.cli("subscriptions", "suspend", "S1003", "--reason", "asked by the customer")
    [carol] = [c for c in api.cli_json("customers", "list") if c["customer_id"] == "C1003"]
    assert carol["tags"] == ["vip"] and carol["phone"] == "+8801712345678"
    [sub] = [s for s in api.cli_json("subscriptions", "list") if s["subscription_id"] == "S1003"]
    assert sub["status"] == "suspended", sub
    trail = api.cli_json("audit", "log", "--customer", "C1003")
    by_type = {entry["type"]: entry for entry in trail}
    assert {"CustomerDetailsChanged", "SubscriptionSuspended"} <= set(by_type), trail
    assert by_type["CustomerDetailsChanged"]["actor"] == "staff:admin"
    assert by_type["SubscriptionSuspended"]["actor"] == "staff:admin"
    assert api.cli_json("parked", "list") == []
    status = wait_until(
        lambda: (
            (rows := api.cli_json("projections", "status"))
            and all(row["behind"] == 0 for row in rows)
            and rows
        ),
        what="every projection caught up",
    )
    assert {row["name"] for row in status} >= {"accounts.customers", "core.audit-trail"}


def assert_an_invoice_is_credited_and_the_tax_report_follows(api: Ispbill, period: str) -> None:
    """Alice's invoice of `period` (metro, VAT 15 %): credited in full, the same request again
    answers the same credit note, the invoice reads back as credited and the tax report takes
    the credit note off. Carol (metro too) stays billed."""
    api.cli_json("bill-run", "--period", period)  # issued already: issues nothing
    [alice] = api.cli_json("invoices", "list", "--customer", "C1001", "--period", period)
    [carol] = api.cli_json("invoices", "list", "--customer", "C1003", "--period", period)
    path = f"/api/v1/invoices/{alice['number']}/credit-notes"
    request = {"reason": "billed by mistake", "reference": "E2E-CREDIT-1"}
    note = api.post(path, request)
    assert note["total"] == alice["total"] and note["invoice_number"] == alice["number"]
    assert note["number"].startswith("CN-")
    assert api.post(path, request)["number"] == note["number"]  # a retry: the same note
    wait_until(
        lambda: api.cli_json("invoices", "show", alice["number"])["status"] == "credited",
        what="the invoice to read back as credited",
    )
    wait_until(
        lambda: (
            [n["number"] for n in api.get(f"/api/v1/credit-notes?invoice={alice['number']}")]
            == [note["number"]]
        ),
        what="the credit note in the history",
    )
    rows = api.get(f"/api/v1/reports/tax?period={period}")
    [metro] = [r for r in rows if r["customer_region"] == "metro"]
    [carol_vat] = carol["taxes"]
    assert (metro["invoices"], metro["credit_notes"]) == (2, 1)
    assert (metro["taxable"], metro["tax"]) == (
        carol_vat["taxable"]["amount"],
        carol_vat["amount"]["amount"],
    )


def assert_the_auditor_verifies_every_invoice(api: Ispbill, period: str) -> None:
    """`ispbill audit verify` re-derives every invoice of the period (the credited one
    included) from the log and finds nothing; `ispbill audit chain verify` walks the ledger's
    hash chain, and its head, passed back as an anchor, still holds."""
    verified = api.cli_json("audit", "verify", "--period", period)
    assert verified["ok"], verified["findings"]
    assert verified["invoices_checked"] >= 2 and verified["credit_notes_checked"] == 1
    chain = api.cli_json("audit", "chain", "verify")
    assert chain["ok"] and chain["unchained"] == 0 and chain["checked"] > 0, chain
    anchor = f"{chain['head_position']}:{chain['head_hash']}"
    again = api.cli("audit", "chain", "verify", "--anchor", anchor).stdout
    assert again.startswith("ok:") and "anchors checked 1" in again, again
