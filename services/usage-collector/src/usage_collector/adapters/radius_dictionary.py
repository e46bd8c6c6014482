"""The collector's RADIUS dictionary (package data) and the pyrad-based attribute decoder."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pyrad import tools
from pyrad.dictionary import Dictionary

from usage_collector.domain.accounting_record import AccountingAttributes, AttributeValue
from usage_collector.domain.radius_packet import RadiusPacket

VENDOR_SPECIFIC = 26
_NO_NAMES: Mapping[bytes, str] = {}


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

    Runs once per accounting request, so the dictionary is compiled at construction into one
    table: attribute key -> (name, named values, value decoder). The decoders of the common
    types give what pyrad's `tools.DecodeAttr` gives; the others call it.
    """

    def __init__(self, dictionary: Dictionary | None = None) -> None:
        self._dictionary = dictionary if dictionary is not None else load_dictionary()
        self._table = _compile(self._dictionary)

    def value_names(self, attribute_type: int) -> Mapping[bytes, str]:
        entry = self._table.get(attribute_type)
        return (entry[1] or _NO_NAMES) if entry is not None else _NO_NAMES

    def __call__(self, packet: RadiusPacket) -> AccountingAttributes:
        decoded: dict[str, list[AttributeValue]] = {}
        table = self._table
        for attribute_type, value in packet.attributes:
            if attribute_type == VENDOR_SPECIFIC:
                for key, sub_value in _vendor_attributes(value):
                    _add(decoded, table, key, sub_value)
                continue
            entry = table.get(attribute_type)
            if entry is None:
                decoded.setdefault(f"Attr-{attribute_type}", []).append(value)
                continue
            name, named_values, decode = entry
            typed = named_values.get(value) if named_values else None
            if typed is None:
                typed = decode(value)
            values = decoded.get(name)
            if values is None:
                decoded[name] = [typed]
            else:
                values.append(typed)
        return decoded


_Key = int | tuple[int, int]
_Decoder = Callable[[bytes], AttributeValue]
_Entry = tuple[str, dict[bytes, str] | None, _Decoder]


def _add(
    decoded: dict[str, list[AttributeValue]], table: dict[_Key, _Entry], key: _Key, raw: bytes
) -> None:
    entry = table.get(key)
    if entry is None:
        name = f"Attr-{key}" if isinstance(key, int) else f"Vendor-{key[0]}-Attr-{key[1]}"
        decoded.setdefault(name, []).append(raw)
        return
    name, named_values, decode = entry
    value = named_values.get(raw) if named_values else None
    decoded.setdefault(name, []).append(decode(raw) if value is None else value)


def _compile(dictionary: Dictionary) -> dict[_Key, _Entry]:
    table: dict[_Key, _Entry] = {}
    for key, name in dictionary.attrindex.backward.items():
        attribute = dictionary.attributes.get(name)
        if attribute is None:
            continue
        named_values: dict[bytes, str] = dict(attribute.values.backward)
        table[key] = (name, named_values or None, _decoder_for(attribute.type))
    return table


def _decoder_for(datatype: str) -> _Decoder:
    fast = _FAST_DECODERS.get(datatype)
    if fast is not None:
        return fast

    def decode(raw: bytes) -> AttributeValue:
        try:
            value: AttributeValue = tools.DecodeAttr(datatype, raw)
        except (ValueError, struct.error):
            return raw
        return value

    return decode


def _integer(raw: bytes) -> AttributeValue:
    return int.from_bytes(raw, "big") if len(raw) == 4 else raw


def _string(raw: bytes) -> AttributeValue:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # e.g. an encrypted value: kept as octets, as pyrad does


def _octets(raw: bytes) -> AttributeValue:
    return raw


def _ipv4_address(raw: bytes) -> AttributeValue:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}" if len(raw) == 4 else raw


#: Same results as tools.DecodeAttr; a value of the wrong length stays raw octets.
_FAST_DECODERS: dict[str, _Decoder] = {
    "integer": _integer,
    "date": _integer,
    "string": _string,
    "octets": _octets,
    "ipaddr": _ipv4_address,
}


def _vendor_attributes(value: bytes) -> list[tuple[_Key, bytes]]:
    """RFC 2865 section 5.26 sub-attributes; a VSA that does not parse stays one raw attribute."""
    if len(value) < 6:
        return [(VENDOR_SPECIFIC, value)]
    (vendor,) = struct.unpack_from("!L", value)
    found: list[tuple[_Key, bytes]] = []
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
