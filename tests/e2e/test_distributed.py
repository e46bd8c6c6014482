"""The thin path on the distributed runtime: one process per component, Kafka, PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from ispbill_app.demo import DEMO_NAS_SECRET
from ispbill_core.access import bearer_metadata
from ispbill_core.sealing import new_key
from tests.e2e.harness import ISPBILL, Ispbill, Process, create_admin, free_port, wait_until
from tests.e2e.scenario import (
    assert_a_clerks_changes_are_read_back_and_audited,
    assert_a_nas_secret_change_takes_effect,
    assert_a_session_is_split_by_band_and_reaches_its_thresholds,
    assert_an_invoice_is_credited_and_the_tax_report_follows,
    assert_bad_packets_dropped_and_counted,
    assert_one_trace_links_packet_to_line,
    assert_the_auditor_verifies_every_invoice,
    assert_usage_before_a_subscription_is_rated_once_it_starts,
    run_thin_path,
)
from tests.e2e.test_import_detail import RADACCT
from tests.fixtures.kafka import TansuBroker
from tests.fixtures.smtp import Mailbox

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


class Cluster:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.processes: dict[str, Process] = {}

    def start(self, component: str, **extra_env: str) -> Process:
        env = {
            **self.env,
            "ISPBILL_TRACE_FILE": str(self.tmp / f"trace-{component}.jsonl"),
            **extra_env,
        }
        proc = Process(component, [*ISPBILL, "serve", component], self.tmp, env)
        self.processes[component] = proc
        return proc

    def check(self) -> None:
        for proc in self.processes.values():
            proc.assert_running()

    def stop(self) -> dict[str, int]:
        return {name: proc.stop() for name, proc in reversed(self.processes.items())}

    def trace_files(self) -> list[Path]:
        return sorted(self.tmp.glob("trace-*.jsonl"))


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_dsn: str, kafka_broker: TansuBroker, smtp_server: Mailbox
) -> Iterator[tuple[Cluster, Ispbill, int, int, Ispbill]]:
    http, radius, grpc_port = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    env = {
        "ISPBILL_LEDGER": postgres_dsn,
        "ISPBILL_LEDGER_SCHEMA": f"e2e_{uuid.uuid4().hex[:8]}",
        "ISPBILL_KAFKA": kafka_broker.bootstrap,
        "ISPBILL_HTTP_PORT": str(http),
        "ISPBILL_RADIUS_ACCT_PORT": str(radius),
        "ISPBILL_GRPC_PORT": str(grpc_port),
        "ISPBILL_SMTP_HOST": smtp_server.host,
        "ISPBILL_SMTP_PORT": str(smtp_server.port),
        "ISPBILL_DATA_DIR": str(tmp_path / "data"),
        "ISPBILL_TIMEZONE": "UTC",
        # A PostgreSQL ledger has no key file: the api (sealing) and the collector (opening)
        # are given the same key; the chart does it with a Secret.
        "ISPBILL_SECRETS_KEY": new_key(),
    }
    nodes = Cluster(tmp_path, env)
    api = Ispbill(http)
    try:
        # The API process creates the ledger schema; the others start once it is up.
        nodes.start("api")
        wait_until(lambda: (nodes.check(), api.healthy())[1], what="the API process")
        # The first staff user, on the shared ledger; every later call logs in as it.
        create_admin([], env, tmp_path)
        collector_http = free_port()
        nodes.start("collector", ISPBILL_HTTP_PORT=str(collector_http))
        for component in ("rating", "invoicing", "notifier"):
            nodes.start(component, ISPBILL_SECRETS_KEY="")  # they never read a NAS secret
        api.cli("demo")
        wait_until(lambda: (nodes.check(), _grpc_serving(grpc_port))[1], what="invoicing gRPC")
        collector = Ispbill(collector_http, auth=api)  # the same ledger: the same tokens
        wait_until(lambda: (nodes.check(), collector.healthy())[1], what="the collector")
        yield nodes, api, radius, grpc_port, collector
    finally:
        codes = nodes.stop()
        # pytest shows captured output only for failing tests: the logs are the evidence.
        for proc in nodes.processes.values():
            text = proc.log_text()
            shown = text if os.environ.get("ISPBILL_SHOW_LOGS") else text[-8000:]
            print(f"===== {proc.name}\n{shown}")
        failed = {name: code for name, code in codes.items() if code != 0}
        assert not failed, {n: nodes.processes[n].log_text()[-2000:] for n in failed}


def _grpc_serving(port: int) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service="ispbill.v1.InvoiceService"), timeout=2
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_distributed_thin_path(cluster, smtp_server):
    nodes, api, radius_port, grpc_port, collector = cluster
    invoice = run_thin_path(api, radius_port, smtp_server)
    assert_a_clerks_changes_are_read_back_and_audited(api)
    assert_bad_packets_dropped_and_counted(collector, "/api/v1/collector/counters", radius_port)
    nodes.check()
    assert_one_trace_links_packet_to_line(nodes.trace_files(), invoice["number"])

    # Internal services read invoices over gRPC.
    from ispbill.v1 import invoices_pb2, invoices_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = invoices_pb2_grpc.InvoiceServiceStub(channel)
        request = invoices_pb2.GetInvoiceRequest(invoice_id=invoice["invoice_id"])
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetInvoice(request, timeout=5)  # no token
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A service token (ISPBILL_SERVICE_TOKEN): a token of a staff user, here the admin's.
        got = stub.GetInvoice(request, timeout=5, metadata=bearer_metadata(api.token))
        assert got.invoice.number == invoice["number"]
        assert got.invoice.total.amount == "34.65"
        assert got.invoice.status == invoices_pb2.INVOICE_STATUS_PAID

        # ... and customers and subscriptions, on the same port.
        from ispbill.v1 import accounts_pb2, accounts_pb2_grpc

        accounts = accounts_pb2_grpc.AccountsServiceStub(channel)
        customer_id = invoice["customer_id"]
        token = bearer_metadata(api.token)
        customer = accounts.GetCustomer(
            accounts_pb2.GetCustomerRequest(customer_id=customer_id), timeout=5, metadata=token
        ).customer
        assert customer.name == got.invoice.customer_name
        subscriptions = accounts.ListSubscriptions(
            accounts_pb2.ListSubscriptionsRequest(customer_id=customer_id),
            timeout=5,
            metadata=token,
        ).subscriptions
        assert [s.customer_id for s in subscriptions] == [customer_id] * len(subscriptions)
        assert subscriptions

    # Migrating from FreeRADIUS: its detail files go in through the collector, onto Kafka, and
    # rating folds them like live packets (bob's March session: 1.2 GB up, 7.5 GB down).
    imported = json.loads(
        collector.cli("import", "radius-detail", str(RADACCT), "--format", "json").stdout
    )
    assert imported["imported"] == 3, imported
    wait_until(
        lambda: api.get("/api/v1/usage/C1002/2026-03")["total_octets"] == 8_700_000_000,
        what="imported FreeRADIUS history rated from Kafka",
    )
    assert collector.get("/api/v1/collector/pollers") == {}  # no ISPBILL_POLLERS here

    # Usage from before its subscription: kept by rating (faust), rated by its ledger reactor.
    assert_usage_before_a_subscription_is_rated_once_it_starts(api, radius_port)
    # A session split across a band's start, and the quota thresholds it reaches.
    assert_a_session_is_split_by_band_and_reaches_its_thresholds(api, radius_port)

    # The API seals a new NAS secret; the collector, another process given the same key,
    # opens it from the ledger and answers with it.
    new_secret = assert_a_nas_secret_change_takes_effect(api, radius_port)
    nodes.check()
    registrations, leaks = asyncio.run(
        _nas_registrations_and_leaks(
            nodes.env["ISPBILL_LEDGER"],
            nodes.env["ISPBILL_LEDGER_SCHEMA"],
            [DEMO_NAS_SECRET, new_secret],
        )
    )
    assert registrations == 2 and leaks == 0  # both secrets are in PostgreSQL, sealed only

    # A correction: alice's invoice credited in full; the tax report follows.
    assert_an_invoice_is_credited_and_the_tax_report_follows(api, invoice["period"])
    assert_the_auditor_verifies_every_invoice(api, invoice["period"])


async def _nas_registrations_and_leaks(
    dsn: str, schema: str, secrets: list[str]
) -> tuple[int, int]:
    """How many NAS registrations the ledger holds, and how many events show a secret."""
    conn = await asyncpg.connect(dsn)
    try:
        registrations = await conn.fetchval(
            f"SELECT count(*) FROM {schema}.events WHERE type = 'NasRegistered'"
        )
        leaks = 0
        for secret in secrets:
            leaks += await conn.fetchval(
                f"SELECT count(*) FROM {schema}.events"
                " WHERE data::text LIKE $1 OR metadata::text LIKE $1",
                f"%{secret}%",
            )
        return registrations, leaks
    finally:
        await conn.close()
