"""Screen one datagram: known NAS, authentic, well-formed -> the record and its response."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple

from usage_collector.application.nas_registry import NasRegistry, RegisteredNas, normalise_ip
from usage_collector.application.ports import AttributeDecoder
from usage_collector.domain.accounting_record import (
    ACCT_TERMINATE_CAUSE,
    AccountingRecord,
    InvalidAccountingRecord,
    decode_accounting_attributes,
)
from usage_collector.domain.radius_packet import (
    ACCOUNTING_REQUEST,
    MESSAGE_AUTHENTICATOR,
    STATUS_SERVER,
    MalformedPacket,
    RadiusPacket,
    accounting_response,
    message_authenticator_is_valid,
    parse_packet,
    request_authenticator_is_valid,
)


class DropReason(StrEnum):
    """Why a datagram got no response; each value is the name of a server counter."""

    UNKNOWN_NAS = "dropped_unknown_nas"
    BAD_AUTHENTICATOR = "dropped_bad_authenticator"
    MISSING_MESSAGE_AUTHENTICATOR = "dropped_missing_message_authenticator"
    MALFORMED = "dropped_malformed"
    INVALID_RECORD = "dropped_invalid_record"


class AcceptedRequest(NamedTuple):
    """A verified request: the record to publish and the response to send once it is durable."""

    nas: RegisteredNas
    record: AccountingRecord
    response: bytes


class StatusServerRequest(NamedTuple):
    """An authentic Status-Server (RFC 5997): the NAS asks whether we are alive; the response
    goes out at once, since there is nothing to make durable."""

    nas: RegisteredNas
    response: bytes


@dataclass(frozen=True, slots=True)
class DroppedRequest:
    reason: DropReason
    detail: str
    nas_id: str | None = None


def screen_accounting_request(
    datagram: bytes,
    source_ip: str,
    received_at: datetime,
    *,
    registry: NasRegistry,
    decode_attributes: AttributeDecoder,
) -> AcceptedRequest | StatusServerRequest | DroppedRequest:
    """Decide what one datagram is. Never raises for bad input: every failure is a drop.

    The NAS is identified by the source address, not by NAS-IP-Address or NAS-Identifier,
    which the sender controls; the secret of that NAS is the only proof of who sent it.
    """
    ip = _normalised(source_ip)
    if ip is None:
        return DroppedRequest(DropReason.MALFORMED, f"source address {source_ip!r}")
    nas = registry.lookup(ip)
    if nas is None:
        return DroppedRequest(DropReason.UNKNOWN_NAS, f"no NAS registered at {ip}")
    try:
        packet = parse_packet(datagram)
    except MalformedPacket as exc:
        return DroppedRequest(DropReason.MALFORMED, str(exc), nas.nas_id)
    secret = nas.secret
    if packet.code != ACCOUNTING_REQUEST:
        if packet.code == STATUS_SERVER:
            return _status_server(packet, nas)
        return DroppedRequest(
            DropReason.MALFORMED, f"code {packet.code} is not an Accounting-Request", nas.nas_id
        )
    if not request_authenticator_is_valid(packet, secret):
        return DroppedRequest(
            DropReason.BAD_AUTHENTICATOR, "Request Authenticator does not match", nas.nas_id
        )
    if MESSAGE_AUTHENTICATOR in packet.first:
        if not message_authenticator_is_valid(packet, secret):
            return DroppedRequest(
                DropReason.BAD_AUTHENTICATOR, "Message-Authenticator does not match", nas.nas_id
            )
    elif nas.require_message_authenticator:
        return DroppedRequest(
            DropReason.MISSING_MESSAGE_AUTHENTICATOR,
            "this NAS must send a Message-Authenticator",
            nas.nas_id,
        )
    try:
        record = decode_accounting_attributes(
            packet.first,
            nas_id=nas.nas_id,
            nas_ip=ip,
            received_at=received_at,
            terminate_causes=decode_attributes.value_names(ACCT_TERMINATE_CAUSE),
        )
    except InvalidAccountingRecord as exc:
        return DroppedRequest(DropReason.INVALID_RECORD, str(exc), nas.nas_id)
    return AcceptedRequest(nas, record, accounting_response(packet, secret))


def _status_server(
    packet: RadiusPacket, nas: RegisteredNas
) -> StatusServerRequest | DroppedRequest:
    """RFC 5997: answered at once with an Accounting-Response, nothing published. Its Request
    Authenticator is random, so the Message-Authenticator is its only proof, and it is required
    whatever the NAS's own switch says (section 3)."""
    if MESSAGE_AUTHENTICATOR not in packet.first:
        return DroppedRequest(
            DropReason.MISSING_MESSAGE_AUTHENTICATOR,
            "a Status-Server must carry a Message-Authenticator",
            nas.nas_id,
        )
    if not message_authenticator_is_valid(packet, nas.secret):
        return DroppedRequest(
            DropReason.BAD_AUTHENTICATOR, "Message-Authenticator does not match", nas.nas_id
        )
    return StatusServerRequest(
        nas, accounting_response(packet, nas.secret, message_authenticator=True)
    )


@lru_cache(maxsize=4096)
def _normalised(source_ip: str) -> str | None:
    """normalise_ip once per source address, not once per datagram (it parses the address)."""
    try:
        return normalise_ip(source_ip)
    except ValueError:
        return None
