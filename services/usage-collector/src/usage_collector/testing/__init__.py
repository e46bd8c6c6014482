"""An independent RFC 2866 / RFC 3579 packet builder and checker, for tests and fuzzing.

Written from the RFCs, not from the collector's code, so that the collector can be checked
against it: the decoder tests (tests/test_fuzz_decoder.py) and the million-packet fuzzer
(bench/fuzz_collector.py) both build their packets with `sign` and judge every accepted record
with `independently_authentic` and `insane_fields`. `usage_collector.testing.routeros` is a
protocol-level stand-in of a MikroTik router's API service, for the RouterOS poller's tests and
the all-in-one e2e. The collector itself never imports this package.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from datetime import UTC, datetime
from pathlib import Path

from ispbill_core.contracts.accounts import nas_registration, nas_stream
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import ANY, EventStore
from ispbill_core.sealing import Keyring
from usage_collector.application.nas_registry import RegisteredNas
from usage_collector.application.screen_accounting_request import AcceptedRequest

ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5
MESSAGE_AUTHENTICATOR = 80
VENDOR_SPECIFIC = 26
#: Integer attributes the record is built from (RFC 2866, RFC 2869).
INTEGER_ATTRIBUTES = (40, 41, 42, 43, 46, 47, 48, 49, 52, 53, 55)
#: Text and address attributes: User-Name, NAS-IP, Framed-IP, Calling-Station-Id, Session-Id...
OTHER_ATTRIBUTES = (1, 4, 5, 8, 30, 31, 32, 33, 44, 45, 50, 51, 61, 87, 95, 96, 97)
#: Cisco, Juniper, MikroTik, a reserved 0, Microsoft, and the largest vendor number.
VENDORS = (9, 2636, 14988, 0, 311, 0xFFFFFFFF)

#: Two NASes by source address: one plain, one that requires Message-Authenticator.
FUZZ_NASES = {
    "127.0.0.1": RegisteredNas(
        nas_id="nas-1",
        ip_address="127.0.0.1",
        secret=b"testing123",
        require_message_authenticator=False,
    ),
    "127.0.0.2": RegisteredNas(
        nas_id="nas-2",
        ip_address="127.0.0.2",
        secret=b"s3cr3t-ma",
        require_message_authenticator=True,
    ),
}


def key_beside(ledger: Path) -> Keyring:
    """The keyring of an SQLite ledger: `secrets.key` beside it, made when missing, as
    `ispbill run` and `python -m usage_collector` find it."""
    return Keyring.from_env({}, default_file=ledger.parent / "secrets.key", create_default=True)


async def register_nas(
    store: EventStore,
    keyring: Keyring,
    *,
    secret: bytes,
    nas_id: str = "nas-1",
    ip_address: str = "127.0.0.1",
    require_message_authenticator: bool = False,
) -> int:
    """Record a NAS registration (its secret sealed), as the accounts API does; its position."""
    event = nas_registration(
        keyring,
        nas_id=nas_id,
        name=nas_id,
        ip_address=ip_address,
        secret=secret.decode("utf-8"),
        require_message_authenticator=require_message_authenticator,
    )
    stream = nas_stream(nas_id)
    event_id = deterministic_id("test-nas", stream, event.model_dump_json())
    await store.append(stream, [new_event(event, id=event_id, occurred_at=datetime.now(UTC))], ANY)
    return await store.head_position()


def attribute(attribute_type: int, value: bytes) -> bytes:
    return bytes([attribute_type, len(value) + 2]) + value


def sign(
    identifier: int,
    attributes: bytes,
    secret: bytes,
    *,
    ma: bool,
    code: int = ACCOUNTING_REQUEST,
) -> bytes:
    """A request signed per RFC 2866 section 3 (and RFC 3579 for the Message-Authenticator)."""
    if ma:
        attributes += attribute(MESSAGE_AUTHENTICATOR, bytes(16))
    header = struct.pack("!BBH", code, identifier, 20 + len(attributes))
    if ma:
        digest = hmac.new(secret, header + bytes(16) + attributes, hashlib.md5).digest()
        attributes = attributes[:-16] + digest
    authenticator = hashlib.md5(
        header + bytes(16) + attributes + secret, usedforsecurity=False
    ).digest()
    return header + authenticator + attributes


def independently_authentic(datagram: bytes, nas: RegisteredNas) -> bool:
    """Would an RFC-following server accept this datagram's framing and authenticators?"""
    if len(datagram) < 20:
        return False
    code, _, length = struct.unpack_from("!BBH", datagram)
    if code != ACCOUNTING_REQUEST or not 20 <= length <= 4096 or len(datagram) < length:
        return False
    raw = datagram[:length]
    offset, ma_values, ma_offset = 20, [], -1
    while offset < length:
        if length - offset < 2 or raw[offset + 1] < 2 or offset + raw[offset + 1] > length:
            return False
        if raw[offset] == MESSAGE_AUTHENTICATOR:
            ma_values.append(raw[offset + 2 : offset + raw[offset + 1]])
            ma_offset = offset + 2 if ma_offset < 0 else ma_offset
        offset += raw[offset + 1]
    digest = hashlib.md5(
        raw[:4] + bytes(16) + raw[20:] + nas.secret, usedforsecurity=False
    ).digest()
    if not hmac.compare_digest(digest, raw[4:20]):
        return False
    if not ma_values:
        return not nas.require_message_authenticator
    if len(ma_values) != 1 or len(ma_values[0]) != 16:
        return False
    zeroed = raw[:ma_offset] + bytes(16) + raw[ma_offset + 16 :]
    expected = hmac.new(nas.secret, zeroed[:4] + bytes(16) + zeroed[20:], hashlib.md5).digest()
    return hmac.compare_digest(expected, ma_values[0])


def insane_fields(result: AcceptedRequest, nases: dict[str, RegisteredNas]) -> list[str]:
    """What is wrong with an accepted record: counters outside 0..2^64, naive datetimes, a NAS
    other than the one the source address names, a response that is no Accounting-Response."""
    record = result.record
    problems = [
        name
        for name in (
            "delay_time",
            "session_time",
            "input_octets",
            "output_octets",
            "input_packets",
            "output_packets",
        )
        if not (
            (value := getattr(record, name)) is None
            or (isinstance(value, int) and 0 <= value < 2**64)
        )
    ]
    if record.event_time.utcoffset() is None:
        problems.append("event_time")
    if record.received_at.utcoffset() is None:
        problems.append("received_at")
    if record.nas_id != nases[record.nas_ip].nas_id:
        problems.append("nas_id")
    if len(result.response) < 20 or result.response[0] != ACCOUNTING_RESPONSE:
        problems.append("response")
    return problems
