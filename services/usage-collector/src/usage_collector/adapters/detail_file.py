"""Reading FreeRADIUS detail files (rlm_detail), one record at a time, plain or gzip-compressed.

A detail file is a sequence of records separated by a blank line. Each record starts with a
header line (by default the time in ctime format, local time of the FreeRADIUS server) and
goes on with one `<TAB>Attribute-Name = value` line per attribute; FreeRADIUS appends its own
`Timestamp = <unix seconds>` (when it received the packet) and, with `log_packet_header`, the
packet's addresses and ports (each attribute line starts with a tab):

    Tue Nov 24 19:48:51 2026
        Packet-Src-IP-Address = 127.0.0.1
        User-Name = "bob"
        Acct-Status-Type = Interim-Update
        Event-Timestamp = "Nov  4 2026 10:00:00 CET"
        Acct-Input-Octets = 4000000000
        Class = 0x616263
        Timestamp = 1795546131

Values come out as the live decoder (`adapters/radius_dictionary.py`) gives them, so the same
request yields the same `AccountingAttributes` from the wire and from the file: enumerations by
name ("Interim-Update"), integers as int, text as str (as bytes when it is not UTF-8), octets
as bytes, addresses as str, and dates (Event-Timestamp) as unix seconds.

FreeRADIUS prints dates in its local zone with an abbreviation ("CET"), which does not say the
offset; such dates need the server's zone (`timezone`), and without it reading stops with
LocalTimeWithoutZone rather than guessing an hour. The header time is checked against
Timestamp in that zone, which catches a wrong zone.

Memory stays constant: a record is parsed as its lines arrive and yielded when it ends. A
record that does not parse is yielded as MalformedDetailRecord (file, line, reason), never
dropped silently; reading goes on with the next record.
"""

from __future__ import annotations

import gzip
import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

from usage_collector.domain.accounting_record import AttributeValue

#: Attributes FreeRADIUS's dictionary types as `date`: printed as a quoted local time.
DATE_ATTRIBUTES = frozenset({"Event-Timestamp"})

#: Written by FreeRADIUS about the packet it received, not sent by the NAS: kept apart from
#: the attributes (a live request does not carry them either).
SERVER_ATTRIBUTES = frozenset(
    {
        "Timestamp",
        "Packet-Src-IP-Address",
        "Packet-Src-IPv6-Address",
        "Packet-Dst-IP-Address",
        "Packet-Dst-IPv6-Address",
        "Packet-Src-Port",
        "Packet-Dst-Port",
        "Client-IP-Address",
        "Client-IPv6-Address",
    }
)

#: Where the NAS's address may be, best first. The live collector knows a NAS by the source
#: address of its datagrams, which is what Packet-Src-IP-Address (log_packet_header) and
#: FreeRADIUS 2's Client-IP-Address record; NAS-IP-Address is what the NAS says about itself.
SOURCE_ADDRESS_ATTRIBUTES = (
    "Packet-Src-IP-Address",
    "Packet-Src-IPv6-Address",
    "Client-IP-Address",
    "Client-IPv6-Address",
)
NAS_ADDRESS_ATTRIBUTES = ("NAS-IP-Address", "NAS-IPv6-Address")

MAX_LINE_BYTES = 64 * 1024
MAX_ATTRIBUTES = 1000

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_DAYS = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
#: ctime(3): "Tue Nov 24 19:48:51 2026" (the day of month space-padded).
_CTIME = re.compile(rf"^{_DAYS} {_MONTH} +(\d{{1,2}}) (\d\d):(\d\d):(\d\d) (\d{{4}})$")
_CTIME_AT_END = re.compile(rf"{_DAYS} {_MONTH} +\d{{1,2}} \d\d:\d\d:\d\d \d{{4}}$")
#: FreeRADIUS's date: strftime "%b %e %Y %H:%M:%S %Z" ("Nov  4 2026 10:00:00 CET").
_DATE = re.compile(rf"^{_MONTH} +(\d{{1,2}}) (\d{{4}}) (\d\d):(\d\d):(\d\d)(?: +(\S+))?$")
_ATTRIBUTE = re.compile(
    r"^[ \t]+([A-Za-z0-9][A-Za-z0-9_.\-]*)(?::\d+)?[ \t]+"
    r"(=|:=|\+=|-=|==|!=|>=|<=|=~|!~|=\*|!\*|<|>)[ \t]*(.*)$"
)
_UTC_NAMES = frozenset({"UTC", "GMT", "UCT", "Z", "UT"})
_NUMERIC_ZONE = re.compile(r"^([+-])(\d\d):?(\d\d)?$")
_TORN = "torn record at the end of the file (not completely written)"
_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\", '"': b'"', "'": b"'"}


@dataclass(frozen=True, slots=True)
class DetailRecord:
    """One record of a detail file, typed like a live request's attributes."""

    source: str
    line: int
    header: str
    received_at: datetime
    timestamp: int | None
    attributes: dict[str, list[AttributeValue]]
    nas_addresses: tuple[str, ...]

    @property
    def ref(self) -> str:
        """Where it is: "file:line" of its header."""
        return f"{self.source}:{self.line}"

    @property
    def nas_address(self) -> str | None:
        return self.nas_addresses[0] if self.nas_addresses else None


@dataclass(frozen=True, slots=True)
class MalformedDetailRecord:
    """A record that was skipped: where, and why."""

    source: str
    line: int
    reason: str

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.line}"

    def __str__(self) -> str:
        return f"{self.ref}: {self.reason}"


class LocalTimeWithoutZone(ValueError):
    """A time in the FreeRADIUS server's local zone, and no zone given to read it in."""

    def __init__(self, source: str, line: int, text: str) -> None:
        self.source = source
        self.line = line
        super().__init__(
            f"{source}:{line}: {text!r} is local time of the FreeRADIUS server; give its zone "
            "(--timezone, an IANA name such as Europe/Berlin)"
        )


class _Malformed(ValueError):
    """One line does not parse; the record it belongs to is skipped."""


@dataclass
class _Record:
    """The record being read: values parsed line by line, so nothing but them is kept."""

    line: int
    header: str
    attributes: dict[str, list[AttributeValue]] = field(default_factory=dict)
    server: dict[str, AttributeValue] = field(default_factory=dict)
    count: int = 0
    error: tuple[int, str] | None = None

    def fail(self, line: int, reason: str) -> None:
        if self.error is None:
            self.error = (line, reason)


def read_detail_file(
    path: str | Path, *, timezone: ZoneInfo | None = None, source: str | None = None
) -> Iterator[DetailRecord | MalformedDetailRecord]:
    """The records of one detail file (gzip recognised by its magic number, not its name)."""
    with open(path, "rb") as raw:
        magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
        try:
            yield from parse_detail(stream, source=source or str(path), timezone=timezone)
        except (gzip.BadGzipFile, EOFError) as exc:
            # A gzip file cut short (still being compressed, or copied half): what was read
            # is yielded; the rest is reported, not silently missing.
            yield MalformedDetailRecord(source or str(path), 0, f"compressed data ends: {exc}")


def parse_detail(
    stream: IO[bytes] | Iterable[bytes], *, source: str, timezone: ZoneInfo | None = None
) -> Iterator[DetailRecord | MalformedDetailRecord]:
    """The records of a detail file read as bytes, line by line."""
    record: _Record | None = None
    number = 0
    last_had_newline = True
    for raw, overlong in _lines(stream):
        number += 1
        last_had_newline = raw.endswith(b"\n")
        text = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "surrogateescape")
        if not last_had_newline and text.strip():
            # Only the last line can lack its newline: the file ends inside a record.
            if record is None or text[0] not in " \t":
                record = _Record(number, text)
            record.fail(record.line, _TORN)
            break
        if overlong:
            if record is None:
                record = _Record(number, "")
            record.fail(number, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        if not text.strip():
            if record is not None:
                yield _finish(record, source, timezone)
                record = None
            continue
        if text[0] in " \t":
            if record is None:
                record = _Record(number, "")
                record.fail(number, "attribute line without a header line before it")
            glued = _glued_header(text)
            if glued is not None:
                # A record cut off mid-line, and the next one written straight after it.
                record.fail(number, f"record cut off: {_shown(text[: -len(glued)])}")
                yield _finish(record, source, timezone)
                record = _Record(number, glued)
                continue
            _add_attribute(record, number, text, source, timezone)
            continue
        if record is not None:
            if not _CTIME.match(text):
                record.fail(number, f"unexpected line inside a record: {_shown(text)}")
                continue
            # A new record without the blank line before it.
            yield _finish(record, source, timezone)
        record = _Record(number, text)
    if record is not None:
        if not last_had_newline or "Timestamp" not in record.server:
            # FreeRADIUS writes Timestamp last: without it, or cut mid-line, the record was
            # still being written (or the copy is short); its counters may be missing.
            record.fail(record.line, _TORN)
        yield _finish(record, source, timezone)


def _lines(stream: IO[bytes] | Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Lines with their newline; (the start of the line, True) for one over MAX_LINE_BYTES."""
    readline = getattr(stream, "readline", None)
    if readline is None:
        for line in stream:  # type: ignore[union-attr]
            yield line, len(line) > MAX_LINE_BYTES
        return
    while True:
        line = readline(MAX_LINE_BYTES)
        if not line:
            return
        if len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n"):
            rest = line
            while rest and not rest.endswith(b"\n"):
                rest = readline(MAX_LINE_BYTES)
            yield line[:80] + b"\n", True
            continue
        yield line, False


def _add_attribute(
    record: _Record, number: int, text: str, source: str, zone: ZoneInfo | None
) -> None:
    if record.error is not None:
        return  # the record is skipped anyway; do not parse the rest of it
    record.count += 1
    if record.count > MAX_ATTRIBUTES:
        record.fail(number, f"more than {MAX_ATTRIBUTES} attribute lines in one record")
        return
    try:
        name, value = _attribute(text)
    except _Malformed as exc:
        record.fail(number, str(exc))
        return
    if name in DATE_ATTRIBUTES:
        try:
            value = _date(value, source, number, zone)
        except _Malformed as exc:
            record.fail(number, f"{name}: {exc}")
            return
    if name in SERVER_ATTRIBUTES:
        record.server.setdefault(name, value)
    else:
        record.attributes.setdefault(name, []).append(value)


def _attribute(text: str) -> tuple[str, AttributeValue]:
    match = _ATTRIBUTE.match(text)
    if match is None:
        raise _Malformed(f"not an attribute line: {_shown(text)}")
    name, _, written = match.groups()
    try:
        return name, _value(written.rstrip(" \t"))
    except _Malformed as exc:
        raise _Malformed(f"{name}: {exc}") from None


def _glued_header(text: str) -> str | None:
    """The ctime header at the end of an attribute line that does not parse without it."""
    glued = _CTIME_AT_END.search(text)
    if glued is None or glued.start() == 0:
        return None
    try:
        _attribute(text)
    except _Malformed:
        return glued.group(0)
    return None


def _value(written: str) -> AttributeValue:
    if written.startswith('"'):
        return _quoted(written)
    if written.startswith(("0x", "0X")):
        digits = written[2:]
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise _Malformed(f"octets {_shown(written)} are not hexadecimal") from None
    if written.isdigit() and written.isascii():
        return int(written)
    if not written:
        raise _Malformed("no value")
    raw = written.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        # Read with surrogateescape: text that is not UTF-8 would carry lone surrogates, which
        # no JSON writer takes. Octets, as for a quoted string and as the live decoder keeps it.
        return raw
    return written


def _quoted(written: str) -> AttributeValue:
    """A double-quoted string with FreeRADIUS's escapes; bytes when it is not UTF-8."""
    out = bytearray()
    i, end = 1, len(written)
    while i < end:
        c = written[i]
        if c == '"':
            if written[i + 1 :].strip():
                raise _Malformed(f"text after the closing quote: {_shown(written)}")
            break
        if c == "\\" and i + 1 < end:
            nxt = written[i + 1]
            octal = written[i + 1 : i + 4]
            if len(octal) == 3 and all(d in "01234567" for d in octal):
                out.append(int(octal, 8) & 0xFF)
                i += 4
                continue
            if nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", written[i + 2 : i + 4]):
                out.append(int(written[i + 2 : i + 4], 16))
                i += 4
                continue
            escaped = _ESCAPES.get(nxt)
            if escaped is None:
                # FreeRADIUS keeps an unknown escape as it stands: backslash and character.
                escaped = ("\\" + nxt).encode("utf-8", "surrogateescape")
            out += escaped
            i += 2
            continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    else:
        raise _Malformed(f"no closing quote: {_shown(written)}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(out)  # as the live decoder keeps a string that is not UTF-8


def _date(value: AttributeValue, source: str, number: int, zone: ZoneInfo | None) -> int:
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise _Malformed(f"{value!r} is not a date")
    match = _DATE.match(value)
    if match is None:
        raise _Malformed(f"{value!r} is not a date")
    month, day, year, hh, mm, ss, zone_name = match.groups()
    wall = _wall_time(year, month, day, hh, mm, ss)
    if wall is None:
        raise _Malformed(f"{value!r} is not a date")
    return int(_to_utc(wall, zone_name, zone, source, number, value).timestamp())


def _to_utc(
    wall: datetime,
    zone_name: str | None,
    zone: ZoneInfo | None,
    source: str,
    number: int,
    written: str,
) -> datetime:
    if zone_name is not None and zone_name.upper() in _UTC_NAMES:
        return wall.replace(tzinfo=UTC)
    numeric = _NUMERIC_ZONE.match(zone_name or "")
    if numeric:
        sign, hours, minutes = numeric.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
        return wall.replace(tzinfo=timezone(-offset if sign == "-" else offset)).astimezone(UTC)
    if zone is None:
        raise LocalTimeWithoutZone(source, number, written)
    candidates = [wall.replace(tzinfo=zone, fold=fold) for fold in (0, 1)]
    if zone_name is not None:
        candidates = [c for c in candidates if c.tzname() == zone_name]
        if not candidates:
            raise _Malformed(f"{written!r}: {zone_name} is not a zone name of {zone.key}")
    return candidates[0].astimezone(UTC)


def _finish(
    record: _Record, source: str, zone: ZoneInfo | None
) -> DetailRecord | MalformedDetailRecord:
    if record.error is not None:
        line, reason = record.error
        return MalformedDetailRecord(source, line, reason)
    if not record.attributes:
        return MalformedDetailRecord(source, record.line, "record without attributes")
    timestamp = record.server.get("Timestamp")
    if timestamp is not None and not isinstance(timestamp, int):
        return MalformedDetailRecord(
            source, record.line, f"Timestamp {timestamp!r} is not unix seconds"
        )
    header = _CTIME.match(record.header)
    try:
        received_at = _received_at(record, header, timestamp, zone, source)
    except _Malformed as exc:
        return MalformedDetailRecord(source, record.line, str(exc))
    return DetailRecord(
        source=source,
        line=record.line,
        header=record.header,
        received_at=received_at,
        timestamp=timestamp,
        attributes=record.attributes,
        nas_addresses=_nas_addresses(record),
    )


def _received_at(
    record: _Record,
    header: re.Match[str] | None,
    timestamp: int | None,
    zone: ZoneInfo | None,
    source: str,
) -> datetime:
    wall = None
    if header is not None:
        month, day, hh, mm, ss, year = header.groups()
        wall = _wall_time(year, month, day, hh, mm, ss)
    if timestamp is not None:
        received = datetime.fromtimestamp(timestamp, UTC)
        if wall is not None and zone is not None:
            # The header is the same instant in the server's zone: a check of --timezone.
            local = {wall.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)}
            if received not in local:
                observed = wall - received.replace(tzinfo=None)
                raise _Malformed(
                    f"header {record.header!r} is not Timestamp {timestamp} in {zone.key}"
                    f" (it is {_offset(observed)}): is the zone right?"
                )
        return received
    if wall is None:
        raise _Malformed(f"no Timestamp, and the header {_shown(record.header)} is not a time")
    if zone is None:
        raise LocalTimeWithoutZone(source, record.line, record.header)
    return _to_utc(wall, None, zone, source, record.line, record.header)


def _wall_time(year: str, month: str, day: str, hh: str, mm: str, ss: str) -> datetime | None:
    """A local time as FreeRADIUS printed it: naive until its zone is known."""
    try:
        return datetime(int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss))  # noqa: DTZ001
    except ValueError:
        return None


def _nas_addresses(record: _Record) -> tuple[str, ...]:
    found: list[str] = []
    candidates = [record.server.get(name) for name in SOURCE_ADDRESS_ATTRIBUTES]
    candidates += [
        value for name in NAS_ADDRESS_ATTRIBUTES for value in record.attributes.get(name, [])
    ]
    for value in candidates:
        if not isinstance(value, str):
            continue
        try:
            address = str(ipaddress.ip_address(value))
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return tuple(found)


def _offset(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")
