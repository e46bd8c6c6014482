"""Fixtures of the usage-collector tests: a NAS, a fixed clock, publishers that record or fail.

Tests run with --import-mode=importlib, so helpers reach them as fixtures, not imports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from pyrad.packet import AcctPacket

from ispbill_core.clock import FixedClock
from ispbill_core.events import NewEvent
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import load_dictionary
from usage_collector.application.nas_registry import RegisteredNas

SECRET = b"testing123"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


class RecordingPublisher:
    """Keeps every publish call; `gate` (when given) holds each call until it is set."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.calls: list[tuple[str, list[tuple[str, NewEvent]]]] = []
        self.gate = gate

    async def publish(self, topic: str, messages: Sequence[tuple[str, NewEvent]]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append((topic, list(messages)))

    @property
    def events(self) -> list[NewEvent]:
        return [event for _, messages in self.calls for _, event in messages]


class FailingPublisher:
    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, topic: str, messages: Sequence[tuple[str, NewEvent]]) -> None:
        self.attempts += 1
        raise ConnectionError("bus unavailable")


def make_nas(
    ip: str = "127.0.0.1", *, secret: bytes = SECRET, require_ma: bool = False
) -> RegisteredNas:
    return RegisteredNas(
        nas_id="nas-1", ip_address=ip, secret=secret, require_message_authenticator=require_ma
    )


def accounting_request(
    *,
    secret: bytes = SECRET,
    message_authenticator: bool = False,
    id: int = 7,
    **attributes: object,
) -> bytes:
    """An Accounting-Request as a NAS sends it, built by pyrad's client code."""
    packet = AcctPacket(id=id, secret=secret, dict=load_dictionary())
    for name, value in attributes.items():
        packet[name.replace("_", "-")] = value
    if message_authenticator:
        packet.add_message_authenticator()
    return packet.RequestPacket()


def start_request(**overrides: object) -> bytes:
    attributes: dict[str, object] = {
        "User_Name": "alice",
        "Acct_Status_Type": "Start",
        "Acct_Session_Id": "sess-1",
        "Framed_IP_Address": "10.0.0.5",
        "NAS_IP_Address": "127.0.0.1",
    }
    attributes.update(overrides)
    return accounting_request(**attributes)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def nas() -> RegisteredNas:
    return make_nas()


@pytest.fixture
def registry(nas: RegisteredNas) -> InMemoryNasRegistry:
    return InMemoryNasRegistry([nas])


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def failing_publisher() -> FailingPublisher:
    return FailingPublisher()


class RequestFactory:
    """Builds Accounting-Requests with pyrad's client code; fixture `requests`."""

    secret = SECRET
    now = NOW

    build = staticmethod(accounting_request)
    start = staticmethod(start_request)
    nas = staticmethod(make_nas)
    recording_publisher = RecordingPublisher


@pytest.fixture
def requests() -> type[RequestFactory]:
    return RequestFactory
