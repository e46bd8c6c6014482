"""What input every entry point accepts: money, text, dates, periods, addresses, contacts.

One place, so that the REST API, the CLI, the CSV import and gRPC refuse the same things with
the same words (ADR 0015). Each rule is a pydantic ``Annotated`` type (use it as a field type or
a query/path parameter type) or a plain function a use case calls when it knows more (the
currency of the invoice a payment is for). A refusal is a ``ValueError`` with a short message
that never repeats a long input: pydantic turns it into a 422 problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, EmailStr, Field, WithJsonSchema

from ispbill_core.money import CURRENCIES_IN_USE, MINOR_UNITS, Money

# --- money --------------------------------------------------------------------------------

#: Digits before the point that an amount may have at all (checked before Decimal parses it):
#: every amount is below 10^12 (a trillion) major units, beyond any bill, payment or price of
#: an ISP in any currency we list, and far inside what Decimal arithmetic, PostgreSQL NUMERIC
#: and JSON readers hold exactly. The pattern states it in the OpenAPI document.
_MONEY_INTEGER_DIGITS = 12
_MONEY_FRACTION_DIGITS = max(MINOR_UNITS[c] for c in CURRENCIES_IN_USE)
#: The largest amount accepted unless configured lower (ISPBILL_MONEY_MAX[_<CUR>]).
DEFAULT_MONEY_MAXIMUM = Decimal("999999999999.999")
_DIGITS = rf"[0-9]{{1,{_MONEY_INTEGER_DIGITS}}}(\.[0-9]{{1,{_MONEY_FRACTION_DIGITS}}})?"
MONEY_PATTERN = rf"^{_DIGITS}$"
SIGNED_MONEY_PATTERN = rf"^-?{_DIGITS}$"
_MONEY_RE = re.compile(rf"-?{_DIGITS}")


def money_maximum(currency: str) -> Decimal:
    """The largest amount accepted in `currency`: ISPBILL_MONEY_MAX_<CUR> (e.g.
    ISPBILL_MONEY_MAX_IDR), else ISPBILL_MONEY_MAX, else 10^12 major units."""
    for name in (f"ISPBILL_MONEY_MAX_{currency}", "ISPBILL_MONEY_MAX"):
        if raw := os.environ.get(name):
            if not _MONEY_RE.fullmatch(raw):
                raise ValueError(f"{name} is not a plain decimal number")
            return Decimal(raw)
    return DEFAULT_MONEY_MAXIMUM


def _shown(value: object, limit: int = 40) -> str:
    """A value as an error message may quote it: short, one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decimal_text(value: Any, what: str = "an amount") -> Any:
    if isinstance(value, bool | int | float):
        raise ValueError(
            f'{what} is a JSON string of a plain decimal number such as "29.99", not a JSON'
            " number (a number may lose digits on its way)"
        )
    return value


def _plain_money(value: str) -> str:
    if not _MONEY_RE.fullmatch(value):
        raise ValueError(
            f"{_shown(value)} is not a plain decimal amount: ASCII digits, at most"
            f" {_MONEY_INTEGER_DIGITS} before the point and {_MONEY_FRACTION_DIGITS} after;"
            " no exponent, sign '+', spaces or separators"
        )
    if abs(Decimal(value)) > max(money_maximum(c) for c in CURRENCIES_IN_USE):
        raise ValueError(f"{_shown(value)} is more than any amount accepted")
    return value


def _unsigned_money(value: str) -> str:
    if value.startswith("-"):
        raise ValueError(f"{_shown(value)} is negative; this amount cannot be")
    return _plain_money(value)


def _money_schema(pattern: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": pattern,
            "maxLength": 1 + _MONEY_INTEGER_DIGITS + 1 + _MONEY_FRACTION_DIGITS,
            "examples": ["29.99"],
        }
    )


#: A money amount as it travels: a JSON string of a plain decimal number, not negative (a
#: price, a payment). Checked here for its form and the largest maximum; `money_in` checks it
#: against its currency.
MoneyText = Annotated[
    str,
    BeforeValidator(_decimal_text),
    AfterValidator(_unsigned_money),
    _money_schema(MONEY_PATTERN),
]
#: The same with an optional leading '-' (an adjustment, a credit).
SignedMoneyText = Annotated[
    str,
    BeforeValidator(_decimal_text),
    AfterValidator(_plain_money),
    _money_schema(SIGNED_MONEY_PATTERN),
]


def _known_currency(value: str) -> str:
    if value not in CURRENCIES_IN_USE:
        raise ValueError(f"unknown currency {_shown(value)} (not legal tender anywhere today)")
    return value


#: An ISO 4217 code of a currency in use (legal tender somewhere, CLDR via babel); the
#: document lists them.
Currency = Annotated[
    str,
    AfterValidator(_known_currency),
    WithJsonSchema({"type": "string", "enum": sorted(CURRENCIES_IN_USE)}),
]


def money_in(text: str, currency: str, *, allow_negative: bool = False) -> Money:
    """An amount typed by a person, in `currency`: a plain decimal string with no more decimals
    than the currency has, within its maximum. ValueError otherwise."""
    _plain_money(text)
    value = Decimal(text)
    if value < 0 and not allow_negative:
        raise ValueError(f"{_shown(text)} is negative")
    maximum = money_maximum(currency)
    if abs(value) > maximum:
        raise ValueError(f"{_shown(text)} is more than {maximum} {currency}, the most accepted")
    return Money.exact(value, currency)


def _plain_rate(value: str) -> Decimal:
    if not re.fullmatch(r"(0|1)(\.[0-9]{1,6})?", value) or Decimal(value) > 1:
        raise ValueError(
            f"{_shown(value)} is not a rate between 0 and 1 written as a plain decimal string"
            ' with at most 6 decimals, such as "0.15" for 15 %'
        )
    return Decimal(value)


#: A tax rate as a fraction (0.15 for 15 %), as a plain decimal string; a Decimal once read.
def _rate(value: Any) -> Any:
    value = _decimal_text(value, "a rate")
    if isinstance(value, Decimal):
        value = str(value)
    return _plain_rate(value) if isinstance(value, str) else value


Rate = Annotated[
    Decimal,
    BeforeValidator(_rate),
    WithJsonSchema({"type": "string", "pattern": r"^(0|1)(\.[0-9]{1,6})?$", "examples": ["0.15"]}),
]

# --- text ---------------------------------------------------------------------------------

#: Bidirectional embeddings, overrides and isolates: they make a name read differently from
#: what it is ("Trojan Source"). LRM/RLM marks (U+200E/F) stay: they are how RTL names are typed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: U+FEFF (a byte-order mark in the middle of text): invisible, and breaks exact matching.
_REFUSED_CHARACTERS = _BIDI_CONTROLS | {"\ufeff"}
#: Cc is C0, DEL and C1 (line breaks, tabs, escapes); Zl/Zp are U+2028/U+2029; Cs lone
#: surrogates. Unassigned code points (Cn) are accepted (ADR 0021): which they are depends on
#: the Unicode version of the Python that runs, and no schema can state a moving set.
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def refused_character(value: str) -> str | None:
    """The first character text may not hold, as U+XXXX, or None."""
    for ch in value:
        if ch in _REFUSED_CHARACTERS or unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return f"U+{ord(ch):04X}"
    return None


def one_line_text(value: str) -> str:
    if (bad := refused_character(value)) is not None:
        raise ValueError(
            f"text may not contain control characters, line breaks or bidi overrides ({bad})"
        )
    if value != value.strip():
        raise ValueError("text may not start or end with spaces")
    return value


#: What `one_line_text` accepts, stated for the OpenAPI document in the regular expressions
#: JSON Schema, Python and Rust share: no refused character anywhere (Cc, U+2028/U+2029, bidi
#: controls, U+FEFF), no space (Unicode Zs) at either end. Lone surrogates are refused too but
#: not named: a JSON Schema string is Unicode scalar values, which never include them.
_REFUSED_CLASS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
_SPACES = r" \xa0\u1680\u2000-\u200a\u202f\u205f\u3000"
_INNER = f"[^{_REFUSED_CLASS}]"
_EDGE = f"[^{_REFUSED_CLASS}{_SPACES}]"
TEXT_PATTERN = rf"^(?:{_EDGE}(?:{_INNER}*{_EDGE})?)?$"


def text(max_length: int, *, min_length: int = 1) -> Any:
    """A single line of text of at most `max_length` characters: no control characters, no
    line or paragraph separators, no bidi overrides, no surrounding spaces."""
    return Annotated[
        str,
        Field(
            min_length=min_length,
            max_length=max_length,
            json_schema_extra={"pattern": TEXT_PATTERN},
        ),
        AfterValidator(one_line_text),
    ]


#: A person's or company's name.
Name = text(200)
#: A postal address, on one line (commas between its parts).
Address = text(500, min_length=0)
#: A free reason a clerk gives (suspension, credit note, removal).
Reason = text(500)
#: A short label (plan name, tax name, vendor, payment method).
Label = text(120)

#: Identifiers in stream names and URLs: ASCII, no spaces, bounded.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$"
#: A tax region: levels joined by "." (country, state, district: "BD.dhaka.gulshan"), each
#: level an identifier without dots; no empty level, so "BD." and "BD..x" are refused. At most
#: 64 characters (REGION_MAX_LENGTH), as an identifier (ADR 0029).
REGION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_:@-]*(\.[A-Za-z0-9][A-Za-z0-9_:@-]*)*$"
REGION_MAX_LENGTH = 64
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
#: A payment or bank reference.
Reference = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]

# --- dates and periods --------------------------------------------------------------------

#: Dates a command may carry: a billing system of this century. Outside it a date is a typo
#: (year 0 or 9999 would overflow period arithmetic); documented in ADR 0015.
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2099, 12, 31)


def _date_in_range(value: date) -> date:
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise ValueError(f"a date is between {EARLIEST_DATE} and {LATEST_DATE}")
    return value


def moment_in_range(value: datetime) -> datetime:
    _date_in_range(value.date())
    return value


_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


#: The largest version, position or paging cursor a request may carry: 2^53 - 1, the largest
#: integer every JSON reader holds exactly (a larger one reads back as a neighbour), and far
#: beyond any stream's version or microsecond timestamp ispbill records.
MAX_CURSOR = 2**53 - 1


def _json_integer(value: Any) -> Any:
    # JSON Schema's integer is a number with no fraction (3 and 3.0 alike), never a string
    # or a boolean, which pydantic would otherwise take ("3", true)
    if isinstance(value, bool | str):
        raise ValueError("an integer is a JSON number")
    return value


#: A count or version in a JSON body, as JSON Schema's `integer` means it.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
#: The version of a record a change is based on (optimistic concurrency).
ExpectedVersion = Annotated[int, Field(ge=0, le=MAX_CURSOR), BeforeValidator(_json_integer)]


def _rfc3339(value: Any) -> Any:
    # pydantic would also take a number (seconds since 1970) or "0.5": the document says
    # `format: date-time`, so only that is taken
    if not isinstance(value, datetime) and not (isinstance(value, str) and _RFC3339.match(value)):
        raise ValueError("a moment is written as in RFC 3339, e.g. 2026-11-20T09:00:00Z")
    return value


#: A moment with its UTC offset, as RFC 3339 text only (a query's `since`).
Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]

#: The days `_date_in_range` accepts, stated for the OpenAPI document beside `format: date`:
#: 2000-01-01 to 2099-12-31, each month's own length, 29 February in leap years (2000 is one).
DATE_PATTERN = (
    r"^20[0-9]{2}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))$"
    r"|^20(?:[02468][048]|[13579][26])-02-29$"
)
BILLING_DATE_SCHEMA: dict[str, Any] = {"type": "string", "format": "date", "pattern": DATE_PATTERN}
BillingDate = Annotated[date, AfterValidator(_date_in_range), WithJsonSchema(BILLING_DATE_SCHEMA)]
#: A moment another system reports (a RADIUS record's arrival), within the same range.
Moment = Annotated[
    datetime,
    AfterValidator(moment_in_range),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": r"^20[0-9]{2}-"}),
]
PERIOD_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
#: A billing period, YYYY-MM, 2000-01 to 2099-12.
Period = Annotated[str, Field(pattern=PERIOD_PATTERN, examples=["2026-11"])]

# --- network and contacts -----------------------------------------------------------------


def unicast_address(value: str) -> str:
    """A NAS address: one host that sends accounting from a fixed address, in one spelling
    (IPv4-mapped IPv6 is plain IPv4).

    Refused: unspecified (0.0.0.0, ::), broadcast, multicast, reserved (240/4), and link-local
    (169.254/16, fe80::/10: not a stable address, ambiguous without a zone). Loopback is
    accepted: a NAS on the ISP's own box (a demo, a test, a local FreeRADIUS proxy)."""
    if not isinstance(value, str) or not _ADDRESS_TEXT.fullmatch(value):
        raise ValueError(
            "an IP address is IPv4 or IPv6 text of at most 45 characters, without a zone"
        )
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{_shown(value)} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return str(ip)  # ::1 counts as "reserved" to Python (::/8); it is one host
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local or ip.is_reserved:
        raise ValueError(f"{ip} is not a unicast host address")
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{ip} is the broadcast address")
    return str(ip)


#: The characters an address may be spelled with: what `format: unicast-ip` allows at most.
_ADDRESS_TEXT = re.compile(r"[0-9A-Fa-f:.]{2,45}")
#: How the OpenAPI document states a NAS address: `unicast-ip` names the rule above (no JSON
#: Schema format or portable pattern says "unicast"), the pattern the characters it allows.
NAS_ADDRESS_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "unicast-ip",
    "pattern": "^" + _ADDRESS_TEXT.pattern + "$",
    "description": "a unicast IPv4 or IPv6 address, loopback accepted; not unspecified,"
    " broadcast, multicast, reserved or link-local; no zone",
    "examples": ["192.0.2.10"],
}
NasAddress = Annotated[str, AfterValidator(unicast_address), WithJsonSchema(NAS_ADDRESS_SCHEMA)]
Email = Annotated[EmailStr, Field(max_length=254)]
#: E.164: '+', a country code not starting with 0, at most 15 digits in all; or "" for none.
PHONE_PATTERN = r"^(\+[1-9][0-9]{6,14})?$"
Phone = Annotated[str, Field(pattern=PHONE_PATTERN, examples=["+8801712345678"])]


def radius_username_key(username: str) -> str:
    """What makes two RADIUS usernames the same: `Alice` and `alice` are one subscriber to a
    NAS that folds case, so uniqueness is checked on this key (Unicode case folding)."""
    return username.casefold()
