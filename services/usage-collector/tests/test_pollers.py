"""The pollers' runtime: the config parser (unit), and SNMP and RouterOS routers run together."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import ROUTER_COUNTERS_TOPIC
from usage_collector.adapters.routeros_poller import RouterOsRouter
from usage_collector.pollers import (
    CounterPollers,
    PollerConfig,
    PollerConfigError,
    RouterOsTarget,
    SnmpTarget,
    load_poller_config,
    parse_poller_config,
    run_pollers,
)
from usage_collector.testing.routeros import RouterOsStandIn

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

FULL_CONFIG = """
interval = 60
max_backoff = 300

[[snmp]]
router_id = "core-1"
host = "192.0.2.1"
community_env = "CORE1_COMMUNITY"
interfaces = { ether5 = "carol" }
interval = 30

[[routeros]]
router_id = "bras-1"
host = "192.0.2.2"
username = "ispbill"
password_file = "secrets/bras-1"
tls = true
login = "token"
interfaces = { ether7 = "dave" }
queues = { "q-erin" = "erin" }
queue_targets = { "10.0.0.9" = "frank" }
dynamic_queues = true

[[routeros]]
router_id = "bras-2"
host = "192.0.2.3"
port = 18728
username = "ispbill"
password_env = "BRAS2_PASSWORD"
queue_name_is_username = false
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "bras-1").write_text("from-a-file\n")
    return tmp_path


def write(directory: Path, text: str, name: str = "pollers.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


ENV = {"CORE1_COMMUNITY": "c0mmunity", "BRAS2_PASSWORD": "from-env"}


@pytest.mark.unit
def test_a_full_config_is_read_with_secrets_from_env_and_files(config_dir):
    config = load_poller_config(write(config_dir, FULL_CONFIG), env=ENV)
    (core,) = config.snmp
    assert core == SnmpTarget(
        router_id="core-1",
        host="192.0.2.1",
        community="c0mmunity",
        interfaces={"ether5": "carol"},
        interval=30.0,
    )
    bras1, bras2 = (t.router for t in config.routeros)
    assert [t.interval for t in config.routeros] == [60.0, 60.0]
    assert (bras1.password, bras1.tls, bras1.api_port, bras1.login_method) == (
        "from-a-file",
        True,
        8729,
        "token",
    )
    assert bras1.interfaces == {"ether7": "dave"} and bras1.queues == {"q-erin": "erin"}
    assert bras1.queue_targets == {"10.0.0.9": "frank"} and bras1.dynamic_queues
    assert (bras2.password, bras2.api_port, bras2.tls, bras2.login_method) == (
        "from-env",
        18728,
        False,
        "plain",
    )
    assert not bras2.queue_name_is_username and bras2.pppoe and bras2.simple_queues
    assert config.max_backoff == 300.0
    assert config.router_ids == ["core-1", "bras-1", "bras-2"]
    assert "from-env" not in repr(config) and "c0mmunity" not in repr(config)


@pytest.mark.unit
def test_json_works_too(config_dir):
    data = {
        "interval": 15,
        "routeros": [
            {
                "router_id": "bras-1",
                "host": "192.0.2.2",
                "username": "ispbill",
                "password_env": "BRAS2_PASSWORD",
            }
        ],
    }
    config = load_poller_config(write(config_dir, json.dumps(data), "pollers.json"), env=ENV)
    assert config.routeros[0].interval == 15.0
    assert config.routeros[0].router.password == "from-env"


@pytest.mark.unit
def test_an_empty_config_polls_nothing():
    assert parse_poller_config({}, env={}) == PollerConfig()


def problems_of(text: str, config_dir: Path, env=ENV) -> str:
    with pytest.raises(PollerConfigError) as caught:
        load_poller_config(write(config_dir, text), env=env)
    return str(caught.value)


ROUTEROS = """
[[routeros]]
router_id = "bras-1"
host = "192.0.2.2"
username = "ispbill"
"""


@pytest.mark.unit
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('password = "hunter2"', "password must not be written in the config"),
        ("", "give exactly one of password_env and password_file"),
        (
            'password_env = "BRAS2_PASSWORD"\npassword_file = "secrets/bras-1"',
            "give exactly one of password_env and password_file",
        ),
        ('password_env = "NOT_SET"', "environment variable NOT_SET is not set"),
        ('password_file = "secrets/missing"', "cannot read"),
        ('password_env = "BRAS2_PASSWORD"\nport = 70000', "port must be a TCP/UDP port"),
        ('password_env = "BRAS2_PASSWORD"\ninterval = -5', "interval must be positive"),
        ('password_env = "BRAS2_PASSWORD"\ninterval = "1m"', "interval must be a number"),
        ('password_env = "BRAS2_PASSWORD"\nlogin = "md5"', "login must be 'plain'"),
        ('password_env = "BRAS2_PASSWORD"\ntls = "yes"', "tls must be true or false"),
        ('password_env = "BRAS2_PASSWORD"\npasword_env = "X"', "unknown setting 'pasword_env'"),
        ('password_env = "BRAS2_PASSWORD"\nqueues = { q1 = 5 }', "queues must be a table"),
        (
            'password_env = "BRAS2_PASSWORD"\ntls_ca_file = "nope.pem"',
            "tls_ca_file",
        ),
    ],
)
def test_bad_routeros_settings_are_named_with_the_router(config_dir, extra, expected):
    message = problems_of(ROUTEROS + extra, config_dir)
    assert "routeros[0] 'bras-1':" in message
    assert expected in message
    assert "hunter2" not in message


@pytest.mark.unit
def test_every_problem_is_reported_at_once(config_dir):
    text = """
intervall = 5

[[snmp]]
host = "192.0.2.1"
community_env = "CORE1_COMMUNITY"

[[routeros]]
router_id = "bras-1"
host = "192.0.2.2"
password_env = "BRAS2_PASSWORD"

[[routeros]]
router_id = "bras-1"
host = "192.0.2.3"
username = "ispbill"
password_env = "BRAS2_PASSWORD"
"""
    message = problems_of(text, config_dir)
    assert "pollers.toml" in message
    assert "config: unknown setting 'intervall'" in message
    assert "snmp[0]: router_id is required" in message
    assert "routeros[0] 'bras-1': username is required" in message
    assert message.startswith(f"{config_dir / 'pollers.toml'}: 3 problems")


@pytest.mark.unit
def test_a_router_id_used_twice_is_refused(config_dir):
    text = (
        """
[[snmp]]
router_id = "edge"
host = "192.0.2.1"
community_env = "CORE1_COMMUNITY"
"""
        + ROUTEROS.replace("bras-1", "edge")
        + 'password_env = "BRAS2_PASSWORD"\n'
    )
    assert "router_id 'edge' is used twice" in problems_of(text, config_dir)


@pytest.mark.unit
def test_unreadable_or_malformed_files(tmp_path):
    with pytest.raises(PollerConfigError, match="cannot read"):
        load_poller_config(tmp_path / "missing.toml", env={})
    with pytest.raises(PollerConfigError, match="not valid TOML"):
        load_poller_config(write(tmp_path, "interval = = 5"), env={})
    with pytest.raises(PollerConfigError, match="not valid JSON"):
        load_poller_config(write(tmp_path, "{", "p.json"), env={})
    with pytest.raises(PollerConfigError, match=r"routeros must be a list of tables"):
        load_poller_config(write(tmp_path, 'routeros = "bras-1"'), env={})


# --- running ---------------------------------------------------------------------------------


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def routeros_target(router_id: str, port: int, password: str = "s3cret") -> RouterOsTarget:
    router = RouterOsRouter(router_id, "127.0.0.1", "ispbill", password, port=port, timeout=1.0)
    return RouterOsTarget(router, interval=0.05)


async def wait_for(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0.02)


@pytest.mark.integration
async def test_routers_are_polled_together_and_one_failing_stops_none(publisher):
    async with (
        RouterOsStandIn(users={"ispbill": "s3cret"}) as good,
        RouterOsStandIn(users={"ispbill": "other"}) as refusing,
    ):
        good.connect_pppoe("alice", rx=10, tx=20)
        config = PollerConfig(
            snmp=(
                SnmpTarget(
                    "core-1", "127.0.0.1", "public", port=closed_udp_port(), timeout=0.1,
                    retries=0, interval=0.05,
                ),
            ),
            routeros=(
                routeros_target("bras-1", good.port),
                routeros_target("bras-2", refusing.port),
            ),
            min_backoff=0.01,
            max_backoff=0.05,
        )  # fmt: skip
        pollers = CounterPollers(config, publisher, FixedClock(T0))
        stop = asyncio.Event()
        task = asyncio.create_task(pollers.run(stop))
        await wait_for(
            lambda: (
                len(publisher.calls) >= 3
                and pollers.counters()["bras-2"]["login_failures"] >= 2
                and pollers.counters()["core-1"]["polls_failed"] >= 2
            )
        )
        stop.set()
        await asyncio.wait_for(task, 10)

    counters = pollers.counters()
    assert counters["bras-1"]["polls_failed"] == 0
    assert counters["bras-1"]["connections"] == 1
    assert {topic for topic, _ in publisher.calls} == {ROUTER_COUNTERS_TOPIC}
    assert {key for _, messages in publisher.calls for key, _ in messages} == {
        "bras-1/<pppoe-alice>"
    }
    assert publisher.events[0].data["username"] == "alice"
    assert good.commands[-1][1] == ["/quit"]  # closed politely on stop


@pytest.mark.integration
async def test_run_pollers_ends_on_cancel_and_closes_the_connections(publisher):
    async with RouterOsStandIn(users={"ispbill": "s3cret"}) as ros:
        ros.connect_pppoe("alice", rx=1, tx=2)
        config = PollerConfig(routeros=(routeros_target("bras-1", ros.port),))
        task = asyncio.create_task(run_pollers(config, publisher, FixedClock(T0)))
        await wait_for(lambda: len(publisher.calls) >= 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: ros.commands[-1][1] == ["/quit"])


@pytest.mark.unit
async def test_run_pollers_returns_at_once_without_routers(publisher):
    await asyncio.wait_for(run_pollers(PollerConfig(), publisher, FixedClock(T0)), 1)
    assert publisher.calls == []
