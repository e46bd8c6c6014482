"""`python -m usage_collector --workers 2`: two processes on one port, READY, SIGTERM stops both."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyrad.packet import AcctPacket

from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC, accounting_stream
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.sealing import KEY_ENV, Keyring, new_key
from usage_collector import testing
from usage_collector.adapters.radius_dictionary import load_dictionary

pytestmark = pytest.mark.integration

START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
CLIENTS = 32


@dataclass
class Collector:
    process: asyncio.subprocess.Process
    port: int
    output: list[str] = field(default_factory=list)

    def worker_counters(self) -> dict[int, dict[str, int]]:
        """Final counters per worker, from the log lines "[worker N] final counters {...}"."""
        found = {}
        for line in self.output:
            match = re.search(r"\[worker (\d+)\] final counters (\{.*\})", line)
            if match:
                found[int(match[1])] = json.loads(match[2].replace("'", '"'))
        return found


async def register_nas(ledger: Path, secret: bytes) -> None:
    """The NAS, its secret sealed with the key beside the ledger (found there by the workers)."""
    store = SQLiteEventStore(ledger)
    try:
        await testing.register_nas(store, testing.key_beside(ledger), secret=secret)
    finally:
        await store.close()


@asynccontextmanager
async def collector(ledger: Path, *options: str) -> AsyncIterator[Collector]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "usage_collector", "--ledger", str(ledger),
        "--host", "127.0.0.1", "--port", "0", *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    output: list[str] = []
    port = None
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise AssertionError("the collector exited before READY:\n" + "".join(output))
                output.append(line)
                if match := re.search(r"bound to udp://127\.0\.0\.1:(\d+)", line):
                    port = int(match[1])
                if line.strip() == "READY":
                    break
        assert port is not None, "".join(output)

        async def drain() -> None:  # keep reading, or a full pipe would block the workers
            assert process.stdout is not None
            async for raw in process.stdout:
                output.append(raw.decode())

        reader = asyncio.create_task(drain())
        yield Collector(process, port, output)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    await reader
    print("".join(output))


async def stop(collector: Collector) -> int:
    collector.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(STOP_TIMEOUT):
        return await collector.process.wait()


class _Replies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


async def exchange_from_many_sockets(port: int, requests: list[bytes]) -> list[bytes | None]:
    """Each request from its own socket (own source port), so SO_REUSEPORT spreads them."""
    loop = asyncio.get_running_loop()
    endpoints = [
        await loop.create_datagram_endpoint(_Replies, remote_addr=("127.0.0.1", port))
        for _ in requests
    ]
    try:
        for (transport, _), request in zip(endpoints, requests, strict=True):
            transport.sendto(request)

        async def reply(protocol: _Replies) -> bytes | None:
            try:
                return await asyncio.wait_for(protocol.replies.get(), 10)
            except TimeoutError:
                return None

        return list(await asyncio.gather(*(reply(protocol) for _, protocol in endpoints)))
    finally:
        for transport, _ in endpoints:
            transport.close()


def is_reply_to(request: bytes, reply: bytes | None, secret: bytes) -> bool:
    if reply is None:
        return False
    packet = AcctPacket(secret=secret, dict=load_dictionary(), packet=request)
    return bool(packet.VerifyReply(packet.CreateReply(packet=reply), reply))


def stored_sessions(ledger: Path) -> list[str]:
    with sqlite3.connect(ledger) as db:
        rows = db.execute(
            "SELECT json_extract(data, '$.acct_session_id') FROM events WHERE stream = ?",
            (accounting_stream("nas-1"),),
        ).fetchall()
    return [session for (session,) in rows]


async def test_two_workers_share_the_port_answer_and_stop_on_sigterm(tmp_path, requests) -> None:
    ledger = tmp_path / "ledger.db"
    await register_nas(ledger, requests.secret)
    sent = [requests.start(Acct_Session_Id=f"w-{n}") for n in range(CLIENTS)]
    async with collector(ledger, "--workers", "2") as running:
        replies = await exchange_from_many_sockets(running.port, sent)
        assert all(is_reply_to(q, r, requests.secret) for q, r in zip(sent, replies, strict=True))
        if shutil.which("radclient"):
            radclient = await asyncio.create_subprocess_exec(
                "radclient", "-r", "3", "-t", "2", f"127.0.0.1:{running.port}", "acct",
                requests.secret.decode(),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            attributes = "User-Name=bob,Acct-Status-Type=Start,Acct-Session-Id=rc-1"
            await radclient.communicate(attributes.encode())
            assert radclient.returncode == 0
        assert await stop(running) == 0
    counters = running.worker_counters()
    assert sorted(counters) == [0, 1]
    # 32 source ports hashed over two sockets: both workers answered some.
    assert all(worker["acked"] > 0 for worker in counters.values())
    expected = CLIENTS + (1 if shutil.which("radclient") else 0)
    assert sum(worker["acked"] for worker in counters.values()) == expected
    sessions = stored_sessions(ledger)
    assert sorted(sessions) == sorted(
        [f"w-{n}" for n in range(CLIENTS)] + ["rc-1"][: expected - CLIENTS]
    )


async def test_workers_on_a_postgresql_ledger(
    requests, postgres_dsn, postgres_schema, monkeypatch
) -> None:
    from ispbill_core.eventstore.postgresql import PostgresEventStore

    store = await PostgresEventStore.connect(postgres_dsn, schema=postgres_schema)
    try:
        # A PostgreSQL ledger has no key file beside it: the workers get the key from the env.
        key = new_key()
        monkeypatch.setenv(KEY_ENV, key)
        await testing.register_nas(store, Keyring.from_text(key), secret=requests.secret)
        sent = [requests.start(Acct_Session_Id=f"pg-{n}") for n in range(CLIENTS)]
        options = ["--workers", "2", "--ledger-schema", postgres_schema]
        async with collector(postgres_dsn, *options) as running:  # type: ignore[arg-type]
            replies = await exchange_from_many_sockets(running.port, sent)
            answered = zip(sent, replies, strict=True)
            assert all(is_reply_to(q, r, requests.secret) for q, r in answered)
            assert await stop(running) == 0
        records = await store.read_stream(accounting_stream("nas-1"))
        assert sorted(r.data["acct_session_id"] for r in records) == sorted(
            f"pg-{n}" for n in range(CLIENTS)
        )
    finally:
        await store.close()


async def test_a_worker_that_cannot_start_stops_the_collector_with_an_error(tmp_path) -> None:
    # A ledger path that cannot be created: the first worker fails, the supervisor exits 1.
    blocker = tmp_path / "file"
    blocker.write_text("")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "usage_collector", "--ledger", str(blocker / "ledger.db"),
        "--host", "127.0.0.1", "--port", "0", "--workers", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, KEY_ENV: new_key()},
    )  # fmt: skip
    async with asyncio.timeout(START_TIMEOUT):
        output, _ = await process.communicate()
    assert process.returncode == 1
    assert b"READY" not in output


async def test_without_a_secrets_key_the_collector_does_not_start(tmp_path) -> None:
    """No key in the environment and none beside the ledger: one clear error, no worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISPBILL_SECRETS_KEY")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "usage_collector", "--ledger", str(tmp_path / "ledger.db"),
        "--host", "127.0.0.1", "--port", "0", "--workers", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    async with asyncio.timeout(START_TIMEOUT):
        output, _ = await process.communicate()
    assert process.returncode == 2
    assert b"no secrets key: ISPBILL_SECRETS_KEY and" in output, output
    assert b"secrets.key does not exist" in output, output
    assert b"READY" not in output and not (tmp_path / "ledger.db").exists()


async def test_two_workers_publish_to_kafka(tmp_path, requests, kafka_broker) -> None:

    ledger = tmp_path / "ledger.db"
    await register_nas(ledger, requests.secret)
    prefix = uuid.uuid4().hex[:8]
    sent = [requests.start(Acct_Session_Id=f"{prefix}-{n}") for n in range(CLIENTS)]
    async with collector(ledger, "--workers", "2", "--kafka", kafka_broker.bootstrap) as running:
        replies = await exchange_from_many_sockets(running.port, sent)
        assert all(is_reply_to(q, r, requests.secret) for q, r in zip(sent, replies, strict=True))
        assert await stop(running) == 0
    assert stored_sessions(ledger) == []  # records went to Kafka, not to the ledger
    sessions = await sessions_on_kafka(kafka_broker.bootstrap, prefix, CLIENTS)
    assert sorted(sessions) == sorted(f"{prefix}-{n}" for n in range(CLIENTS))


async def sessions_on_kafka(bootstrap: str, prefix: str, expected: int) -> list[str]:
    """The Acct-Session-Ids starting with prefix on the accounting topic, read from the start
    until `expected` of them arrived (60 s at most)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ispbill_core.bus.kafka_compat import install_kafka_compat

    install_kafka_compat()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    sessions: list[str] = []
    try:
        partitions = [
            TopicPartition(ACCOUNTING_TOPIC, p)
            for p in sorted(consumer.partitions_for_topic(ACCOUNTING_TOPIC) or [])
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(60):
            while len(set(sessions)) < expected:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        session = json.loads(message.value)["data"]["acct_session_id"]
                        if session.startswith(f"{prefix}-"):
                            sessions.append(session)
    finally:
        await consumer.stop()
    return sessions


async def test_workers_spool_while_kafka_hangs_and_drain_when_it_returns(
    tmp_path, requests, kafka_broker
) -> None:
    ledger = tmp_path / "ledger.db"
    spool = tmp_path / "spool"
    await register_nas(ledger, requests.secret)
    prefix = uuid.uuid4().hex[:8]
    sent = [requests.start(Acct_Session_Id=f"{prefix}-{n}") for n in range(CLIENTS)]
    options = ["--workers", "2", "--kafka", kafka_broker.bootstrap, "--spool-dir", str(spool)]
    async with collector(ledger, *options, "--publish-timeout", "0.5") as running:
        kafka_broker.pause()
        try:
            replies = await exchange_from_many_sockets(running.port, sent)
            # Acknowledged although the broker does not answer: the batches are in the spools.
            assert all(
                is_reply_to(q, r, requests.secret) for q, r in zip(sent, replies, strict=True)
            )
            assert sorted(d.name for d in spool.iterdir()) == ["worker-0", "worker-1"]
        finally:
            kafka_broker.resume()
        sessions = await sessions_on_kafka(kafka_broker.bootstrap, prefix, CLIENTS)
        assert await stop(running) == 0
    assert sorted(set(sessions)) == sorted(f"{prefix}-{n}" for n in range(CLIENTS))


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path, requests) -> None:
    ledger = tmp_path / "ledger.db"
    await register_nas(ledger, requests.secret)
    async with collector(ledger, "--workers", "2") as running:
        running.process.kill()  # SIGKILL: the supervisor cannot tell its workers
        await running.process.wait()
        for _ in range(int(STOP_TIMEOUT / 0.2)):
            if port_is_free(running.port):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the workers outlived their supervisor")


def port_is_free(port: int) -> bool:
    """True once nothing is bound to the UDP port any more (a plain bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
