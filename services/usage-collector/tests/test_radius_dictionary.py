"""The shipped dictionary loads in pyrad and types the attributes accounting needs."""

from __future__ import annotations

import pytest

from usage_collector.adapters.radius_dictionary import (
    DictionaryAttributeDecoder,
    dictionary_path,
    load_dictionary,
)
from usage_collector.domain.radius_packet import parse_packet

pytestmark = pytest.mark.unit


def test_the_dictionary_ships_as_package_data_and_loads() -> None:
    assert dictionary_path().is_file()
    dictionary = load_dictionary()
    for name in [
        "Acct-Status-Type",
        "Acct-Input-Octets",
        "Acct-Output-Octets",
        "Acct-Input-Gigawords",
        "Acct-Output-Gigawords",
        "Acct-Input-Packets",
        "Acct-Output-Packets",
        "Event-Timestamp",
        "Acct-Delay-Time",
        "Acct-Session-Time",
        "Acct-Terminate-Cause",
        "Framed-IP-Address",
        "Calling-Station-Id",
        "NAS-IP-Address",
        "NAS-Identifier",
        "Message-Authenticator",
        "Class",
        "Error-Cause",
    ]:
        assert name in dictionary.attributes, name
    assert dictionary.attributes["Event-Timestamp"].type == "date"
    assert dictionary.attrindex.GetForward("Mikrotik-Rate-Limit") == (14988, 8)
    assert dictionary.attrindex.GetForward("Cisco-AVPair") == (9, 1)
    assert dictionary.attrindex.GetForward("Juniper-Local-User-Name") == (2636, 1)


def test_enumerated_values_decode_by_name(requests) -> None:
    raw = requests.build(
        Acct_Status_Type="Interim-Update",
        Acct_Session_Id="s",
        Acct_Terminate_Cause="Lost-Carrier",
        Event_Timestamp=1_700_000_000,
        Framed_IP_Address="10.1.2.3",
        Class=b"\x01\x02",
        Mikrotik_Rate_Limit="10M/10M",
        Cisco_AVPair="ip:addr-pool=main",
    )
    attributes = DictionaryAttributeDecoder()(parse_packet(raw))
    assert attributes["Acct-Status-Type"] == ["Interim-Update"]
    assert attributes["Acct-Terminate-Cause"] == ["Lost-Carrier"]
    assert attributes["Event-Timestamp"] == [1_700_000_000]
    assert attributes["Framed-IP-Address"] == ["10.1.2.3"]
    assert attributes["Class"] == [b"\x01\x02"]
    assert attributes["Mikrotik-Rate-Limit"] == ["10M/10M"]
    assert attributes["Cisco-AVPair"] == ["ip:addr-pool=main"]


def test_unknown_and_ill_typed_attributes_are_kept_raw(requests) -> None:
    raw = requests.build(Acct_Status_Type="Start", Acct_Session_Id="s")
    # Append attribute 200 (unknown) and a 3-octet Acct-Session-Time (must be 4).
    extra = bytes([200, 4, 0xAB, 0xCD, 46, 5, 0, 0, 1])
    packet = parse_packet(raw[:2] + (len(raw) + len(extra)).to_bytes(2, "big") + raw[4:] + extra)
    attributes = DictionaryAttributeDecoder()(packet)
    assert attributes["Attr-200"] == [b"\xab\xcd"]
    assert attributes["Acct-Session-Time"] == [b"\x00\x00\x01"]
