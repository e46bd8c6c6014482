"""RADIUS on the wire: parsing a datagram, checking its authenticators, signing the response.

Pure functions over bytes (RFC 2865 section 3, RFC 2866 section 3, RFC 2869 section 5.14,
RFC 3579 section 3.2); no sockets, no clock. The attribute values themselves are typed by the
dictionary in the adapters; here an attribute is only (type, raw value).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NamedTuple

ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5
#: RFC 5997: a NAS (or proxy) asking whether the server is alive.
STATUS_SERVER = 12

HEADER_LENGTH = 20
MIN_LENGTH = HEADER_LENGTH
#: RFC 2865 section 3 caps a packet at 4096 octets; RFC 7930 allows up to 65535 over TCP only.
MAX_LENGTH = 4096

PROXY_STATE = 33
MESSAGE_AUTHENTICATOR = 80
_ZERO_AUTHENTICATOR = bytes(16)


def _md5(data: bytes) -> bytes:
    """RADIUS's own hash (RFC 2865/2866), not a choice of ours; not used for secrecy."""
    return hashlib.md5(data, usedforsecurity=False).digest()


class MalformedPacket(ValueError):
    """The datagram is not a well-formed RADIUS packet; it is dropped without a reply."""


class RadiusPacket(NamedTuple):
    """A parsed RADIUS packet; `raw` is the packet without any padding past its Length.

    `first` maps each attribute type to its first value, which is all the receive path needs;
    `attributes` and `values` have every attribute in packet order (RADIUS allows repeats).
    A NamedTuple with the full list made only on demand: one is built per datagram on the
    receive path, where a frozen dataclass and an attribute list cost 1.5 us more.
    """

    code: int
    identifier: int
    authenticator: bytes
    raw: bytes
    first: dict[int, bytes]

    @property
    def attributes(self) -> list[tuple[int, bytes]]:
        """(type, value) of every attribute, in packet order (the framing is checked)."""
        raw = self.raw
        found = []
        offset = HEADER_LENGTH
        while offset < len(raw):
            end = offset + raw[offset + 1]
            found.append((raw[offset], raw[offset + 2 : end]))
            offset = end
        return found

    def values(self, attribute_type: int) -> list[bytes]:
        return [value for t, value in self.attributes if t == attribute_type]


def parse_packet(datagram: bytes) -> RadiusPacket:
    """Split a datagram into header and attributes; MalformedPacket when they do not add up."""
    size = len(datagram)
    if size < MIN_LENGTH:
        raise MalformedPacket(f"{size} octets is shorter than a RADIUS header")
    length = (datagram[2] << 8) | datagram[3]
    if length < MIN_LENGTH or length > MAX_LENGTH:
        raise MalformedPacket(f"Length field {length} is outside {MIN_LENGTH}..{MAX_LENGTH}")
    if size < length:
        raise MalformedPacket(f"Length field {length} exceeds the {size} octets received")
    # RFC 2865 section 3: octets past Length are padding, ignored on reception.
    raw = datagram if size == length and type(datagram) is bytes else bytes(datagram[:length])
    first: dict[int, bytes] = {}
    offset = HEADER_LENGTH
    while offset < length:
        if length - offset < 2:
            raise MalformedPacket(f"truncated attribute header at offset {offset}")
        end = offset + raw[offset + 1]
        if end < offset + 2 or end > length:
            raise MalformedPacket(
                f"attribute {raw[offset]} at offset {offset} has length {raw[offset + 1]}"
            )
        attribute_type = raw[offset]
        if attribute_type not in first:
            first[attribute_type] = raw[offset + 2 : end]
        offset = end
    return RadiusPacket(raw[0], raw[1], raw[4:HEADER_LENGTH], raw, first)


def accounting_request_authenticator(packet: RadiusPacket, secret: bytes) -> bytes:
    """RFC 2866 section 3: MD5(Code + Identifier + Length + 16 zeros + Attributes + Secret)."""
    raw = packet.raw
    return _md5(raw[:4] + _ZERO_AUTHENTICATOR + raw[HEADER_LENGTH:] + secret)


def request_authenticator_is_valid(packet: RadiusPacket, secret: bytes) -> bool:
    expected = accounting_request_authenticator(packet, secret)
    return hmac.compare_digest(expected, packet.authenticator)


def has_message_authenticator(packet: RadiusPacket) -> bool:
    return MESSAGE_AUTHENTICATOR in packet.first


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


def accounting_response(
    request: RadiusPacket, secret: bytes, *, message_authenticator: bool = False
) -> bytes:
    """The Accounting-Response datagram acknowledging `request`.

    Response Authenticator = MD5(Code + Identifier + Length + Request Authenticator + Attributes
    + Secret) (RFC 2866 section 3). Proxy-State attributes are echoed in order, as RFC 2865
    section 5.33 asks, so a proxy in between can match the reply. With `message_authenticator`
    the response carries one too (RFC 3579 section 3.2: HMAC-MD5 over the response with the
    Request Authenticator in its header and the attribute zeroed, computed before the
    Response Authenticator), as the answer to a Status-Server should (RFC 5997 section 3).
    """
    attributes = (
        b"".join(
            struct.pack("!BB", PROXY_STATE, len(value) + 2) + value
            for value in request.values(PROXY_STATE)
        )
        if PROXY_STATE in request.first
        else b""
    )
    length = HEADER_LENGTH + len(attributes) + (18 if message_authenticator else 0)
    header = bytes((ACCOUNTING_RESPONSE, request.identifier, length >> 8, length & 0xFF))
    if message_authenticator:
        unsigned = attributes + bytes((MESSAGE_AUTHENTICATOR, 18)) + _ZERO_AUTHENTICATOR
        signature = hmac.new(secret, header + request.authenticator + unsigned, hashlib.md5)
        attributes = unsigned[:-16] + signature.digest()
    authenticator = _md5(header + request.authenticator + attributes + secret)
    return header + authenticator + attributes
