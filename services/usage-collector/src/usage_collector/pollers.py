"""Router counter pollers for ops: a config file of SNMP and RouterOS routers, run together.

The config is TOML (or JSON, by the file's suffix):

```toml
interval = 60          # seconds between polls of each router; a router may set its own
max_backoff = 300      # longest wait between retries of a failing router (default: interval)

[[snmp]]
router_id = "core-1"
host = "192.0.2.1"
community_env = "CORE1_SNMP_COMMUNITY"    # or community_file = "secrets/core-1"
interfaces = { ether5 = "carol" }         # ifName -> subscriber hint; none: every interface

[[routeros]]
router_id = "bras-1"
host = "192.0.2.2"
username = "ispbill"
password_file = "/run/secrets/bras-1"     # or password_env = "BRAS1_API_PASSWORD"
tls = true                                # api-ssl, port 8729 unless `port` says otherwise
interfaces = { ether7 = "dave" }          # interface name -> username
queues = { "q-erin" = "erin" }            # simple-queue name -> username
queue_targets = { "10.0.0.9" = "frank" }  # simple-queue target address -> username
```

Secrets never sit in the file: each is read from an environment variable (`*_env`) or a file
(`*_file`, relative to the config file, trailing newline dropped). `load_poller_config` reports
every problem at once, each with the router it belongs to. `run_pollers` polls every router
on its own schedule until stopped; one router's failures never stop the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ispbill_core.clock import Clock
from usage_collector.adapters.routeros_poller import (
    RouterOsCounterPoller,
    RouterOsRouter,
    poll_periodically,
)
from usage_collector.adapters.snmp_poller import SnmpCounterPoller, SnmpPollError
from usage_collector.application.ports import AccountingPublisher

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0


class PollerConfigError(ValueError):
    """The pollers' configuration is unusable; the message lists every problem found."""


@dataclass(frozen=True, slots=True)
class SnmpTarget:
    router_id: str
    host: str
    community: str = field(repr=False)
    port: int = 161
    interfaces: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 1.0
    retries: int = 2
    interval: float = DEFAULT_INTERVAL


@dataclass(frozen=True, slots=True)
class RouterOsTarget:
    router: RouterOsRouter
    interval: float = DEFAULT_INTERVAL


@dataclass(frozen=True, slots=True)
class PollerConfig:
    snmp: tuple[SnmpTarget, ...] = ()
    routeros: tuple[RouterOsTarget, ...] = ()
    min_backoff: float = 1.0
    max_backoff: float | None = None

    @property
    def router_ids(self) -> list[str]:
        return [t.router_id for t in self.snmp] + [t.router.router_id for t in self.routeros]


# --- parsing --------------------------------------------------------------------------------


def load_poller_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> PollerConfig:
    """Read and check a TOML (or .json) pollers' config; secrets from `env` or files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PollerConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise PollerConfigError(f"{path}: not valid {kind}: {exc}") from None
    try:
        return parse_poller_config(
            data, env=os.environ if env is None else env, base_dir=path.parent
        )
    except PollerConfigError as exc:
        raise PollerConfigError(f"{path}: {exc}") from None


def parse_poller_config(
    data: Any, *, env: Mapping[str, str], base_dir: Path = Path(".")
) -> PollerConfig:
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise PollerConfigError("the config must be a table of settings")
    top = _Section("config", data, problems, env, base_dir)
    interval = top.number("interval", DEFAULT_INTERVAL)
    min_backoff = top.number("min_backoff", 1.0)
    max_backoff = top.number("max_backoff", None)
    snmp_tables = top.tables("snmp")
    routeros_tables = top.tables("routeros")
    top.no_other_keys()

    snmp = [_snmp_target(s, interval) for s in snmp_tables]
    routeros = [_routeros_target(s, interval) for s in routeros_tables]
    seen: set[str] = set()
    for router_id in [t.router_id for t in snmp if t] + [t.router.router_id for t in routeros if t]:
        if router_id in seen:
            problems.append(f"router_id {router_id!r} is used twice (ids key the samples)")
        seen.add(router_id)
    if problems:
        raise PollerConfigError("; ".join(problems) if len(problems) == 1 else _lines(problems))
    return PollerConfig(
        snmp=tuple(t for t in snmp if t is not None),
        routeros=tuple(t for t in routeros if t is not None),
        min_backoff=min_backoff if min_backoff is not None else 1.0,
        max_backoff=max_backoff,
    )


def _lines(problems: list[str]) -> str:
    return f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


def _snmp_target(section: _Section, default_interval: float | None) -> SnmpTarget | None:
    before = len(section.problems)
    target = SnmpTarget(
        router_id=section.router_id(),
        host=section.text("host", required=True) or "",
        community=section.secret("community") or "",
        port=section.port("port", 161),
        interfaces=section.mapping("interfaces"),
        timeout=section.number("timeout", 1.0) or 1.0,
        retries=section.integer("retries", 2, minimum=0),
        interval=section.number("interval", default_interval) or DEFAULT_INTERVAL,
    )
    section.no_other_keys()
    return target if len(section.problems) == before else None


_ROUTEROS_BOOLEANS = ("tls", "tls_verify", "pppoe", "simple_queues", "dynamic_queues")


def _routeros_target(section: _Section, default_interval: float | None) -> RouterOsTarget | None:
    before = len(section.problems)
    router_id = section.router_id()
    defaults = {f.name: f.default for f in fields(RouterOsRouter)}
    login = section.text("login", "plain")
    if login not in ("plain", "token"):
        section.problem(f"login must be 'plain' (RouterOS 6.43+) or 'token' (older), not {login!r}")
    ca_file = section.text("tls_ca_file")
    if ca_file is not None:
        ca_path = section.base_dir / ca_file
        if not ca_path.is_file():
            section.problem(f"tls_ca_file {str(ca_path)!r} does not exist")
        ca_file = str(ca_path)
    router = RouterOsRouter(
        router_id=router_id,
        host=section.text("host", required=True) or "",
        username=section.text("username", required=True) or "",
        password=section.secret("password") or "",
        port=section.port("port", None),
        tls_ca_file=ca_file,
        login_method="token" if login == "token" else "plain",
        timeout=section.number("timeout", 10.0) or 10.0,
        poll_timeout=section.number("poll_timeout", 120.0) or 120.0,
        queue_name_is_username=section.boolean(
            "queue_name_is_username", defaults["queue_name_is_username"]
        ),
        interfaces=section.mapping("interfaces"),
        queues=section.mapping("queues"),
        queue_targets=section.mapping("queue_targets"),
        **{name: section.boolean(name, defaults[name]) for name in _ROUTEROS_BOOLEANS},
    )
    interval = section.number("interval", default_interval) or DEFAULT_INTERVAL
    section.no_other_keys()
    return RouterOsTarget(router, interval) if len(section.problems) == before else None


class _Section:
    """One table of the config; takes keys off it and notes what is wrong, with where."""

    def __init__(
        self,
        where: str,
        data: Mapping[str, Any],
        problems: list[str],
        env: Mapping[str, str],
        base_dir: Path,
    ) -> None:
        self.where = where
        self.data = dict(data)
        self.problems = problems
        self.env = env
        self.base_dir = base_dir

    def problem(self, message: str) -> None:
        self.problems.append(f"{self.where}: {message}")

    def _take(self, key: str) -> Any:
        return self.data.pop(key, None)

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._take(key)
        if value is None:
            if required:
                self.problem(f"{key} is required")
            return default
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{key} must be a non-empty string, not {value!r}")
            return default
        return value

    def number(self, key: str, default: float | None) -> float | None:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(f"{key} must be a number of seconds, not {value!r}")
            return default
        if not math.isfinite(value) or value <= 0:
            self.problem(f"{key} must be positive, not {value!r}")
            return default
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problem(f"{key} must be a whole number >= {minimum}, not {value!r}")
            return default
        return value

    def port(self, key: str, default: int | None) -> Any:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.problem(f"{key} must be a TCP/UDP port (1-65535), not {value!r}")
            return default
        return value

    def boolean(self, key: str, default: Any) -> Any:
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(f"{key} must be true or false, not {value!r}")
            return default
        return value

    def mapping(self, key: str) -> dict[str, str]:
        value = self._take(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
        ):
            self.problem(f"{key} must be a table of names to usernames (strings), not {value!r}")
            return {}
        return dict(value)

    def router_id(self) -> str:
        router_id = self.text("router_id", required=True) or ""
        if router_id:
            self.where = f"{self.where} {router_id!r}"
        return router_id

    def secret(self, name: str) -> str | None:
        """A secret from `<name>_env` or `<name>_file`, exactly one of them."""
        if self._take(name) is not None:
            self.problem(f"{name} must not be written in the config: use {name}_env or {name}_file")
        env_key, file_key = self._take(f"{name}_env"), self._take(f"{name}_file")
        if (env_key is None) == (file_key is None):
            self.problem(f"give exactly one of {name}_env and {name}_file")
            return None
        if env_key is not None:
            if not isinstance(env_key, str) or not env_key:
                self.problem(f"{name}_env must name an environment variable, not {env_key!r}")
                return None
            secret = self.env.get(env_key)
            if not secret:
                self.problem(f"{name}_env: environment variable {env_key} is not set")
                return None
            return secret
        if not isinstance(file_key, str) or not file_key:
            self.problem(f"{name}_file must be a path, not {file_key!r}")
            return None
        path = self.base_dir / file_key
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self.problem(f"{name}_file {str(path)!r}: cannot read: {exc.strerror or exc}")
            return None
        if not secret:
            self.problem(f"{name}_file {str(path)!r} is empty")
            return None
        return secret

    def tables(self, key: str) -> list[_Section]:
        value = self._take(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.problem(f"{key} must be a list of tables ([[{key}]] in TOML)")
            return []
        return [
            _Section(f"{key}[{n}]", item, self.problems, self.env, self.base_dir)
            for n, item in enumerate(value)
        ]

    def no_other_keys(self) -> None:
        for key in sorted(self.data):
            self.problem(f"unknown setting {key!r}")
        self.data.clear()


# --- running --------------------------------------------------------------------------------


@dataclass
class SnmpPollCounters:
    polls: int = 0
    polls_failed: int = 0
    samples_published: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "polls": self.polls,
            "polls_failed": self.polls_failed,
            "samples_published": self.samples_published,
        }


class CountedSnmpPoller:
    """An SNMP poller with the counters the RouterOS one keeps, for `poll_periodically`."""

    def __init__(self, poller: SnmpCounterPoller) -> None:
        self.poller = poller
        self.counters = SnmpPollCounters()

    @property
    def router_id(self) -> str:
        return self.poller.router_id

    async def poll_once(self) -> Sequence[object]:
        self.counters.polls += 1
        try:
            events = await self.poller.poll_once()
        except Exception:
            self.counters.polls_failed += 1
            raise
        self.counters.samples_published += len(events)
        return events

    async def close(self) -> None:
        await self.poller.close()


class CounterPollers:
    """Every configured router's poller; `run` polls them all until stopped."""

    def __init__(self, config: PollerConfig, publisher: AccountingPublisher, clock: Clock) -> None:
        self.config = config
        self.pollers: list[tuple[CountedSnmpPoller | RouterOsCounterPoller, float]] = []
        for snmp in config.snmp:
            poller = SnmpCounterPoller(
                snmp.host,
                snmp.port,
                snmp.community,
                interfaces=snmp.interfaces,
                publisher=publisher,
                clock=clock,
                router_id=snmp.router_id,
                timeout=snmp.timeout,
                retries=snmp.retries,
            )
            self.pollers.append((CountedSnmpPoller(poller), snmp.interval))
        for target in config.routeros:
            routeros = RouterOsCounterPoller(target.router, publisher=publisher, clock=clock)
            self.pollers.append((routeros, target.interval))

    def counters(self) -> dict[str, dict[str, int]]:
        """router_id -> that poller's counters."""
        return {poller.router_id: poller.counters.as_dict() for poller, _ in self.pollers}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        if not self.pollers:
            log.info("no routers configured: no counters to poll")
            return
        log.info("polling %d router(s): %s", len(self.pollers), ", ".join(self.config.router_ids))
        stop = stop or asyncio.Event()
        async with asyncio.TaskGroup() as group:
            for poller, interval in self.pollers:
                group.create_task(
                    poll_periodically(
                        poller,
                        interval,
                        stop=stop,
                        min_backoff=min(self.config.min_backoff, interval),
                        max_backoff=self.config.max_backoff,
                        expected=(SnmpPollError,),
                    ),
                    name=f"poll-{poller.router_id}",
                )


async def run_pollers(
    config: PollerConfig,
    publisher: AccountingPublisher,
    clock: Clock,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Poll every router in `config` until `stop` is set or the task is cancelled.

    Samples go to `publisher` on the router-counters topic. Returns at once when no router
    is configured. Use `CounterPollers` directly to read per-router counters while it runs.
    """
    await CounterPollers(config, publisher, clock).run(stop)
