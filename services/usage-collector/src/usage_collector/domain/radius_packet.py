"""RADIUS on the wire: parsing a datagram, checking its authenticators, signing the response.

Pure functions over bytes (RFC 2865 section 3, RFC 2866 section 3, RFC 2869 section 5.14,
RFC 3579 section 3.2); no sockets, no clock. The attribute values themselves are typed by the
dictionary in the adapters; here an attribute is only (type, raw value).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5

HEADER_LENGTH = 20
MIN_LENGTH = HEADER_LENGTH
#: RFC 2865 section 3 caps a packet at 4096 octets; RFC 7930 allows up to 65535 over TCP only.
MAX_LENGTH = 4096

PROXY_STATE = 33
MESSAGE_AUTHENTICATOR = 80
_ZERO_AUTHENTICATOR = bytes(16)
_HEADER = struct.Struct("!BBH")


class MalformedPacket(ValueError):
    """The datagram is not a well-formed RADIUS packet; it is dropped without a reply."""


@dataclass(frozen=True, slots=True)
class RadiusPacket:
    """A parsed RADIUS packet; `raw` is the packet without any padding past its Length."""

    code: int
    identifier: int
    authenticator: bytes
    attributes: tuple[tuple[int, bytes], ...]
    raw: bytes

    def values(self, attribute_type: int) -> list[bytes]:
        return [value for t, value in self.attributes if t == attribute_type]


def parse_packet(datagram: bytes) -> RadiusPacket:
    """Split a datagram into header and attributes; MalformedPacket when they do not add up."""
    size = len(datagram)
    if size < MIN_LENGTH:
        raise MalformedPacket(f"{size} octets is shorter than a RADIUS header")
    code, identifier, length = _HEADER.unpack_from(datagram)
    if length < MIN_LENGTH or length > MAX_LENGTH:
        raise MalformedPacket(f"Length field {length} is outside {MIN_LENGTH}..{MAX_LENGTH}")
    if size < length:
        raise MalformedPacket(f"Length field {length} exceeds the {size} octets received")
    # RFC 2865 section 3: octets past Length are padding, ignored on reception.
    raw = datagram if size == length and type(datagram) is bytes else bytes(datagram[:length])
    attributes: list[tuple[int, bytes]] = []
    append = attributes.append
    offset = HEADER_LENGTH
    while offset < length:
        if length - offset < 2:
            raise MalformedPacket(f"truncated attribute header at offset {offset}")
        attribute_length = raw[offset + 1]
        end = offset + attribute_length
        if attribute_length < 2 or end > length:
            raise MalformedPacket(
                f"attribute {raw[offset]} at offset {offset} has length {attribute_length}"
            )
        append((raw[offset], raw[offset + 2 : end]))
        offset = end
    return RadiusPacket(
        code=code,
        identifier=identifier,
        authenticator=raw[4:HEADER_LENGTH],
        attributes=tuple(attributes),
        raw=raw,
    )


def accounting_request_authenticator(packet: RadiusPacket, secret: bytes) -> bytes:
    """RFC 2866 section 3: MD5(Code + Identifier + Length + 16 zeros + Attributes + Secret)."""
    return hashlib.md5(  # noqa: S324 - the protocol's hash, not our choice
        packet.raw[:4] + _ZERO_AUTHENTICATOR + packet.raw[HEADER_LENGTH:] + secret
    ).digest()


def request_authenticator_is_valid(packet: RadiusPacket, secret: bytes) -> bool:
    expected = accounting_request_authenticator(packet, secret)
    return hmac.compare_digest(expected, packet.authenticator)


def has_message_authenticator(packet: RadiusPacket) -> bool:
    return any(t == MESSAGE_AUTHENTICATOR for t, _ in packet.attributes)


def message_authenticator_is_valid(packet: RadiusPacket, secret: bytes) -> bool:
    """RFC 2869 section 5.14 / RFC 3579 section 3.2 for an Accounting-Request.

    HMAC-MD5 keyed with the secret over the packet with the Message-Authenticator value zeroed;
    in an Accounting-Request the Request Authenticator field is also taken as 16 zero octets,
    since the authenticator itself is computed over the already signed attributes.
    Exactly one Message-Authenticator of 16 octets is allowed.
    """
    found = [v for t, v in packet.attributes if t == MESSAGE_AUTHENTICATOR]
    if len(found) != 1 or len(found[0]) != 16:
        return False
    received = found[0]
    zeroed = _zero_message_authenticator(packet.raw)
    vector = _ZERO_AUTHENTICATOR if packet.code == ACCOUNTING_REQUEST else packet.authenticator
    expected = hmac.new(secret, zeroed[:4] + vector + zeroed[HEADER_LENGTH:], hashlib.md5).digest()
    return hmac.compare_digest(expected, received)


def _zero_message_authenticator(raw: bytes) -> bytes:
    offset = HEADER_LENGTH
    while offset + 2 <= len(raw):
        attribute_type, attribute_length = raw[offset], raw[offset + 1]
        if attribute_type == MESSAGE_AUTHENTICATOR:
            start = offset + 2
            return raw[:start] + bytes(attribute_length - 2) + raw[offset + attribute_length :]
        offset += attribute_length
    return raw


def accounting_response(request: RadiusPacket, secret: bytes) -> bytes:
    """The Accounting-Response datagram acknowledging `request`.

    Response Authenticator = MD5(Code + Identifier + Length + Request Authenticator + Attributes
    + Secret) (RFC 2866 section 3). Proxy-State attributes are echoed in order, as RFC 2865
    section 5.33 asks, so a proxy in between can match the reply.
    """
    attributes = b"".join(
        struct.pack("!BB", PROXY_STATE, len(value) + 2) + value
        for value in request.values(PROXY_STATE)
    )
    length = HEADER_LENGTH + len(attributes)
    header = struct.pack("!BBH", ACCOUNTING_RESPONSE, request.identifier, length)
    authenticator = hashlib.md5(  # noqa: S324 - the protocol's hash
        header + request.authenticator + attributes + secret
    ).digest()
    return header + authenticator + attributes
