"""The FreeRADIUS detail file reader: real FreeRADIUS output, damage, and a round trip."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usage_collector.adapters.detail_file import (
    DetailRecord,
    LocalTimeWithoutZone,
    MalformedDetailRecord,
    parse_detail,
    read_detail_file,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "freeradius"
UTC_FILE = FIXTURES / "radacct-utc" / "127.0.0.1" / "detail-20260310"
BERLIN_FILE = FIXTURES / "detail-europe-berlin"
BERLIN = ZoneInfo("Europe/Berlin")


def parse(text: str | bytes, zone: ZoneInfo | None = None) -> list[object]:
    data = text.encode() if isinstance(text, str) else text
    return list(parse_detail(io.BytesIO(data), source="detail", timezone=zone))


def only_records(items: list[object]) -> list[DetailRecord]:
    assert all(isinstance(i, DetailRecord) for i in items), items
    return items  # type: ignore[return-value]


def malformed(items: list[object]) -> list[tuple[int, str]]:
    return [(i.line, i.reason) for i in items if isinstance(i, MalformedDetailRecord)]


# --- what FreeRADIUS 3.2 writes -------------------------------------------------------------


def test_a_utc_freeradius_file_reads_as_typed_attributes():
    records = only_records(list(read_detail_file(UTC_FILE)))
    assert [r.line for r in records] == [1, 22, 49, 78]
    start, interim, stop, failed = records
    assert start.attributes["Acct-Status-Type"] == ["Start"]
    assert start.attributes["NAS-Port"] == [7]
    assert start.attributes["NAS-Port-Type"] == ["Ethernet"]
    assert start.attributes["Framed-IP-Address"] == ["100.64.0.10"]
    assert start.attributes["Calling-Station-Id"] == ["AA-BB-CC-00-11-22"]
    assert start.attributes["Event-Timestamp"] == [1773129600]
    assert interim.attributes["Acct-Status-Type"] == ["Interim-Update"]
    assert stop.attributes["Acct-Output-Octets"] == [3205032704]
    assert stop.attributes["Acct-Output-Gigawords"] == [1]
    assert stop.attributes["Acct-Terminate-Cause"] == ["User-Request"]
    assert failed.attributes["Acct-Status-Type"] == ["Failed"]
    # FreeRADIUS's own lines are about the packet, not from the NAS.
    assert "Timestamp" not in start.attributes
    assert not any(name.startswith("Packet-") for name in start.attributes)
    assert start.timestamp == 1773129601
    assert start.received_at == datetime(2026, 3, 10, 8, 0, 1, tzinfo=UTC)
    assert stop.received_at == datetime(2026, 3, 10, 8, 20, 3, tzinfo=UTC)
    # The source address (what the live collector knows a NAS by) before NAS-IP-Address.
    assert start.nas_addresses == ("127.0.0.1", "10.0.0.1")
    assert failed.nas_addresses == ("127.0.0.1",)
    assert start.ref == f"{UTC_FILE}:1"


def test_dates_in_a_local_zone_need_the_zone_and_dst_is_told_apart_by_its_abbreviation():
    with pytest.raises(LocalTimeWithoutZone) as raised:
        list(read_detail_file(BERLIN_FILE))
    assert f"{BERLIN_FILE}:10" in str(raised.value) and "--timezone" in str(raised.value)

    records = only_records(list(read_detail_file(BERLIN_FILE, timezone=BERLIN)))
    stamps = [r.attributes["Event-Timestamp"][0] for r in records]
    # 02:30 on 25 October 2026 happens twice in Berlin: CEST (00:30 UTC), then CET (01:30 UTC).
    assert stamps == [
        1774745400,
        1774749000,
        1792888200,
        1792891800,
        1782900000,
        1782900000,
        1782800000,
    ]
    assert all(r.received_at == datetime.fromtimestamp(1795546457, UTC) for r in records)


def test_strings_octets_and_repeated_attributes_come_out_as_the_live_decoder_gives_them():
    records = only_records(list(read_detail_file(BERLIN_FILE, timezone=BERLIN)))
    odd, non_utf8, accounting_on = records[4], records[5], records[6]
    assert odd.attributes["User-Name"] == ['we"ird\\name é']
    assert odd.attributes["NAS-Identifier"] == ["tab\there\nnewline"]
    assert odd.attributes["Class"] == [b"\x00\xff\x10"]
    assert odd.attributes["Cisco-AVPair"] == ["connect-progress=LAN Ses Up", "ip:addr-pool=main"]
    assert odd.attributes["Tunnel-Type"] == ["L2TP"]  # the tag (":0") is not part of the name
    assert odd.attributes["Acct-Terminate-Cause"] == [99]  # a value without a name: a number
    assert odd.attributes["Framed-IPv6-Prefix"] == ["2001:db8:1::/64"]
    assert odd.nas_addresses == ("127.0.0.1", "2001:db8::1")
    # Not UTF-8: octets, as the live decoder keeps such a string.
    assert non_utf8.attributes["User-Name"] == [b"a\x01b\xffc"]
    assert accounting_on.attributes["Acct-Status-Type"] == ["Accounting-On"]


def test_a_wrong_zone_is_caught_by_the_header_or_the_abbreviation():
    items = list(read_detail_file(BERLIN_FILE, timezone=ZoneInfo("America/New_York")))
    reasons = [i.reason for i in items if isinstance(i, MalformedDetailRecord)]
    assert len(reasons) == len(items) == 7
    assert "CET is not a zone name of America/New_York" in reasons[0]
    # Same offsets as Berlin: the abbreviations agree and the header matches; nothing differs.
    assert only_records(list(read_detail_file(BERLIN_FILE, timezone=ZoneInfo("Europe/Paris"))))

    header_only = 'Tue Nov 24 19:54:17 2026\n\tUser-Name = "x"\n\tTimestamp = 1795546457\n\n'
    (item,) = parse(header_only, ZoneInfo("UTC"))
    assert isinstance(item, MalformedDetailRecord)
    assert item.line == 1
    assert "(it is UTC+01:00): is the zone right?" in item.reason


def test_gzip_is_read_by_its_magic_number(tmp_path):
    packed = tmp_path / "detail-20260310.rotated"  # no .gz: the content decides
    packed.write_bytes(gzip.compress(UTC_FILE.read_bytes()))
    plain = list(read_detail_file(UTC_FILE))
    assert list(read_detail_file(packed, source=str(UTC_FILE))) == plain


def test_a_gzip_file_cut_short_yields_what_it_has_and_says_so(tmp_path):
    data = gzip.compress(UTC_FILE.read_bytes() * 50)
    cut = tmp_path / "detail.gz"
    cut.write_bytes(data[: len(data) // 2])
    items = list(read_detail_file(cut))
    assert any(isinstance(i, DetailRecord) for i in items)
    assert isinstance(items[-1], MalformedDetailRecord)
    assert "compressed data ends" in items[-1].reason or "torn record" in items[-1].reason


# --- damage, each reported with its line -----------------------------------------------------

RECORD = """Tue Mar 10 08:00:01 2026
\tUser-Name = "bob"
\tAcct-Session-Id = "s1"
\tAcct-Status-Type = Start
\tEvent-Timestamp = "Mar 10 2026 08:00:00 UTC"
\tTimestamp = 1773129601
"""


def test_a_record_torn_at_the_end_of_the_file_is_reported_not_imported():
    cut_mid_line = RECORD + "\n" + RECORD[:60]
    items = parse(cut_mid_line)
    assert isinstance(items[0], DetailRecord)
    torn = "torn record at the end of the file (not completely written)"
    assert malformed(items) == [(8, torn)]

    cut_between_lines = RECORD + "\n" + "\n".join(RECORD.splitlines()[:4]) + "\n"
    assert malformed(parse(cut_between_lines)) == [(8, torn)]

    # Complete (Timestamp, FreeRADIUS's last line, is there) but no blank line after it: kept.
    assert only_records(parse(RECORD + "\n" + RECORD))


def test_garbage_is_reported_with_its_line_and_the_rest_is_read():
    text = (
        RECORD
        + "\n"
        + 'Tue Mar 10 08:00:01 2026\n\tUser-Name = "bob"\nGARBAGE LINE\n\tTimestamp = 1\n\n'
        + "\tAcct-Status-Type = Start\n\tTimestamp = 1\n\n"  # no header
        + "stray words\n\n"  # a header without attributes
        + 'Tue Mar 10 08:00:01 2026\n\tUser-Name = "unterminated\n\tTimestamp = 1\n\n'
        + "Tue Mar 10 08:00:01 2026\n\tClass = 0xabc\n\tTimestamp = 1\n\n"
        + "Tue Mar 10 08:00:01 2026\n\tno equals sign here\n\tTimestamp = 1\n\n"
        + 'Tue Mar 10 08:00:01 2026\n\tEvent-Timestamp = "yesterday"\n\tTimestamp = 1\n\n'
        + 'Tue Mar 10 08:00:01 2026\n\tUser-Name = "x" trailing\n\tTimestamp = 1\n\n'
        + 'Tue Mar 10 08:00:01 2026\n\tTimestamp = "soon"\n\tUser-Name = "x"\n\n'
        + 'not a time\n\tUser-Name = "x"\n\n'
        + RECORD
    )
    items = parse(text)
    assert [i.line for i in items if isinstance(i, DetailRecord)] == [1, 45]
    assert malformed(items) == [
        (10, "unexpected line inside a record: 'GARBAGE LINE'"),
        (13, "attribute line without a header line before it"),
        (16, "record without attributes"),
        (19, "User-Name: no closing quote: '\"unterminated'"),
        (23, "Class: octets '0xabc' are not hexadecimal"),
        (27, "not an attribute line: '\\tno equals sign here'"),
        (31, "Event-Timestamp: 'yesterday' is not a date"),
        (35, "User-Name: text after the closing quote: '\"x\" trailing'"),
        (38, "Timestamp 'soon' is not unix seconds"),
        (42, "no Timestamp, and the header 'not a time' is not a time"),
    ]


def test_a_record_cut_off_and_followed_on_the_same_line_by_the_next_loses_only_itself():
    text = RECORD[:70] + RECORD + "\n" + RECORD
    items = parse(text)
    assert malformed(items) == [(4, "record cut off: '\\tA'")]
    assert [i.line for i in items if isinstance(i, DetailRecord)] == [4, 11]
    assert items[1].header == "Tue Mar 10 08:00:01 2026"  # type: ignore[attr-defined]


def test_records_without_a_blank_line_between_them_and_crlf_line_ends():
    text = (RECORD + RECORD).replace("\n", "\r\n")
    records = only_records(parse(text))
    assert [r.line for r in records] == [1, 7]
    assert records[0].attributes["User-Name"] == ["bob"]


def test_escapes_and_zones():
    text = (
        "Tue Mar 10 08:00:01 2026\n"
        '\tUser-Name = "\\101\\x42\\q\\\'"\n'
        '\tEvent-Timestamp = "Mar 10 2026 13:30:00 +0530"\n'
        "\tAcct-Session-Time = 5\n"
        '\tTmp-String-0 := "set by unlang"\n'
        "\tTimestamp = 1773129601\n\n"
        "Tue Mar 10 08:00:01 2026\n"
        "\tEvent-Timestamp = 1773129600\n"
        '\tUser-Name = ""\n'
        "\tTimestamp = 1773129601\n\n"
    )
    first, second = only_records(parse(text))
    assert first.attributes["User-Name"] == ["AB\\q'"]
    assert first.attributes["Event-Timestamp"] == [1773129600]
    assert first.attributes["Tmp-String-0"] == ["set by unlang"]
    assert second.attributes["Event-Timestamp"] == [1773129600]
    assert second.attributes["User-Name"] == [""]


def test_without_timestamp_the_header_is_read_in_the_given_zone():
    text = 'Tue Mar 10 09:00:01 2026\n\tUser-Name = "bob"\n\n'
    with pytest.raises(LocalTimeWithoutZone):
        parse(text)
    (record,) = only_records(parse(text, BERLIN))
    assert record.received_at == datetime(2026, 3, 10, 8, 0, 1, tzinfo=UTC)
    assert record.timestamp is None


def test_an_overlong_line_spoils_its_record_only():
    text = RECORD + "\n" + "Tue Mar 10 08:00:01 2026\n\tClass = 0x" + "00" * 40000 + "\n\n" + RECORD
    items = parse(text)
    assert malformed(items) == [(9, "line longer than 65536 bytes")]
    assert len(items) == 3


# --- round trip: records written as FreeRADIUS writes them read back the same -----------------

ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")]
_names = st.sampled_from
STRING_ATTRIBUTES = ["User-Name", "Acct-Session-Id", "Calling-Station-Id", "Cisco-AVPair"]
INTEGER_ATTRIBUTES = ["Acct-Session-Time", "Acct-Input-Octets", "NAS-Port", "Acct-Delay-Time"]
ENUMS = {
    "Acct-Status-Type": ["Start", "Stop", "Interim-Update", "Accounting-On", "Failed"],
    "Acct-Terminate-Cause": ["User-Request", "Lost-Carrier", "Idle-Timeout"],
}


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


attribute_value = st.one_of(
    st.tuples(_names(STRING_ATTRIBUTES), st.text(max_size=30)),
    st.tuples(_names(STRING_ATTRIBUTES), st.binary(max_size=12).filter(_not_utf8)),
    st.tuples(_names(INTEGER_ATTRIBUTES), st.integers(0, 2**32 - 1)),
    st.sampled_from(sorted(ENUMS)).flatmap(lambda n: st.tuples(st.just(n), _names(ENUMS[n]))),
    st.tuples(_names(["Framed-IP-Address", "NAS-IP-Address"]), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just("NAS-IPv6-Address"), st.ip_addresses(v=6).map(str)),
    st.tuples(st.just("Class"), st.binary(max_size=16)),
)
detail_record = st.fixed_dictionaries(
    {
        "values": st.lists(attribute_value, min_size=1, max_size=12),
        "event_timestamp": st.none() | st.integers(946684800, 2524608000),
        "timestamp": st.integers(946684800, 2524608000),
        "source": st.none() | st.ip_addresses(v=4).map(str),
    }
)


def render_string(value: str | bytes) -> str:
    """As FreeRADIUS prints a string: quoted, \\ " and control characters escaped."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    text = data.decode("utf-8", "surrogateescape")
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\{code - 0xDC00:03o}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def render_date(stamp: int, zone: ZoneInfo) -> str:
    local = datetime.fromtimestamp(stamp, zone)
    return f'"{local:%b} {local.day:2d} {local:%Y %H:%M:%S} {local.tzname()}"'


def render(record: dict, zone: ZoneInfo) -> str:
    header = datetime.fromtimestamp(record["timestamp"], zone)
    lines = [f"{header:%a %b} {header.day:2d} {header:%H:%M:%S %Y}"]
    if record["source"]:
        lines.append(f"\tPacket-Src-IP-Address = {record['source']}")
    for name, value in record["values"]:
        if name == "Class":
            shown = "0x" + value.hex()
        elif name in STRING_ATTRIBUTES:
            shown = render_string(value)
        else:
            shown = str(value)
        lines.append(f"\t{name} = {shown}")
    if record["event_timestamp"] is not None:
        lines.append(f"\tEvent-Timestamp = {render_date(record['event_timestamp'], zone)}")
    lines.append(f"\tTimestamp = {record['timestamp']}")
    return "\n".join(lines) + "\n\n"


@settings(max_examples=300, deadline=None)
@given(records=st.lists(detail_record, min_size=1, max_size=5), zone=st.sampled_from(ZONES))
def test_records_rendered_in_detail_format_read_back_the_same(records, zone):
    text = "".join(render(r, zone) for r in records)
    parsed = only_records(parse(text.encode("utf-8", "surrogateescape"), zone))
    assert len(parsed) == len(records)
    for record, got in zip(records, parsed, strict=True):
        expected: dict[str, list[object]] = {}
        for name, value in record["values"]:
            if isinstance(value, bytes) and name != "Class":
                value = value if _not_utf8(value) else value.decode()
            expected.setdefault(name, []).append(value)
        if record["event_timestamp"] is not None:
            expected["Event-Timestamp"] = [record["event_timestamp"]]
        assert got.attributes == expected
        assert got.timestamp == record["timestamp"]
        assert got.received_at == datetime.fromtimestamp(record["timestamp"], UTC)
        if record["source"]:
            assert got.nas_addresses[0] == record["source"]


def test_an_unquoted_value_that_is_not_utf8_is_kept_as_octets() -> None:
    """Like a quoted one (and as the live decoder keeps it), never as text with lone surrogates,
    which no JSON writer takes: the import would refuse the whole batch."""
    text = (
        b"Tue Mar 10 08:00:00 2026\n\tUser-Name = d\xffve\n\tAcct-Status-Type = Start\n"
        b"\tTimestamp = 1773129600\n\n"
    )
    (record,) = only_records(parse(text))
    assert record.attributes["User-Name"] == [b"d\xffve"]
