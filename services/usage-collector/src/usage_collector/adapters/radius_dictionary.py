"""The collector's RADIUS dictionary (package data) and the pyrad-based attribute decoder."""

from __future__ import annotations

import struct
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pyrad import tools
from pyrad.dictionary import Dictionary

from usage_collector.domain.accounting_record import AccountingAttributes, AttributeValue
from usage_collector.domain.radius_packet import RadiusPacket

VENDOR_SPECIFIC = 26


def dictionary_path() -> Path:
    """The top file of the shipped dictionary; the others are $INCLUDEd relative to it."""
    return Path(str(resources.files("usage_collector.adapters").joinpath("dictionary/dictionary")))


@lru_cache(maxsize=1)
def load_dictionary() -> Dictionary:
    return Dictionary(str(dictionary_path()))


class DictionaryAttributeDecoder:
    """Names and types attributes by a pyrad Dictionary.

    An attribute the dictionary does not know is kept as raw octets under "Attr-<type>" or
    "Vendor-<id>-Attr-<type>"; a value that does not fit its declared type (a 3-octet integer)
    is kept as raw octets too, so the domain can refuse it by name if it needs that attribute
    and ignore it otherwise.
    """

    def __init__(self, dictionary: Dictionary | None = None) -> None:
        self._dictionary = dictionary if dictionary is not None else load_dictionary()

    def __call__(self, packet: RadiusPacket) -> AccountingAttributes:
        decoded: dict[str, list[AttributeValue]] = {}
        for attribute_type, value in packet.attributes:
            if attribute_type == VENDOR_SPECIFIC:
                for key, sub_value in _vendor_attributes(value):
                    self._add(decoded, key, sub_value)
            else:
                self._add(decoded, attribute_type, value)
        return decoded

    def _add(
        self, decoded: dict[str, list[AttributeValue]], key: int | tuple[int, int], raw: bytes
    ) -> None:
        index = self._dictionary.attrindex
        if not index.HasBackward(key):
            name = f"Attr-{key}" if isinstance(key, int) else f"Vendor-{key[0]}-Attr-{key[1]}"
            decoded.setdefault(name, []).append(raw)
            return
        name = index.GetBackward(key)
        attribute = self._dictionary.attributes[name]
        value: AttributeValue
        if attribute.values.HasBackward(raw):
            value = attribute.values.GetBackward(raw)
        else:
            try:
                value = tools.DecodeAttr(attribute.type, raw)
            except (ValueError, struct.error):
                value = raw
        decoded.setdefault(name, []).append(value)


def _vendor_attributes(value: bytes) -> list[tuple[int | tuple[int, int], bytes]]:
    """RFC 2865 section 5.26 sub-attributes; a VSA that does not parse stays one raw attribute."""
    if len(value) < 6:
        return [(VENDOR_SPECIFIC, value)]
    (vendor,) = struct.unpack_from("!L", value)
    found: list[tuple[int | tuple[int, int], bytes]] = []
    offset = 4
    while offset < len(value):
        if len(value) - offset < 2:
            return [(VENDOR_SPECIFIC, value)]
        sub_type, sub_length = value[offset], value[offset + 1]
        if sub_length < 2 or offset + sub_length > len(value):
            return [(VENDOR_SPECIFIC, value)]
        found.append(((vendor, sub_type), value[offset + 2 : offset + sub_length]))
        offset += sub_length
    return found
