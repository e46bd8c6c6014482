"""The composition root's collector pieces: topic -> ledger stream, and which pollers run."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispbill_app.collector_runtime import ConfiguredPollers, embedded_stream_for
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC, ROUTER_COUNTERS_TOPIC

pytestmark = pytest.mark.unit

CONFIG = """
[[routeros]]
router_id = "bras-1"
host = "127.0.0.1"
username = "ispbill"
password_env = "BRAS1_PASSWORD"
"""


class NoPublisher:
    async def publish(self, topic: str, messages: object) -> None:
        raise AssertionError("nothing is polled in these tests")


def test_each_topic_has_its_stream_per_nas_or_router() -> None:
    assert embedded_stream_for(ACCOUNTING_TOPIC, "nas-1/81a0") == "radius-acct-nas-1"
    assert embedded_stream_for(ROUTER_COUNTERS_TOPIC, "bras-1/<pppoe-a>") == (
        "router-counters-bras-1"
    )
    with pytest.raises(ValueError, match="no ledger stream"):
        embedded_stream_for("ispbill.other", "k")


def pollers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: str) -> ConfiguredPollers:
    monkeypatch.setenv("BRAS1_PASSWORD", "s3cret")
    path = tmp_path / "pollers.toml"
    path.write_text(CONFIG)
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    return ConfiguredPollers(str(path), NoPublisher(), clock, **options)


def test_pollers_run_where_no_host_is_named_or_on_the_named_host(tmp_path, monkeypatch) -> None:
    assert list(pollers(tmp_path, monkeypatch).counters()) == ["bras-1"]
    here = pollers(tmp_path, monkeypatch, only_on_host=socket.gethostname())
    assert list(here.counters()) == ["bras-1"]


async def test_other_replicas_do_not_poll(tmp_path, monkeypatch) -> None:
    elsewhere = pollers(tmp_path, monkeypatch, only_on_host="collector-0-of-another-host")
    assert elsewhere.counters() == {}
    await elsewhere.run()  # returns at once: nothing to poll here


def test_a_broken_config_stops_the_start_with_every_problem(tmp_path) -> None:
    path = tmp_path / "pollers.toml"
    path.write_text('[[routeros]]\nrouter_id = "bras-1"\n')
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(SystemExit, match=r"ISPBILL_POLLERS: (.|\n)*bras-1"):
        ConfiguredPollers(str(path), NoPublisher(), clock)
