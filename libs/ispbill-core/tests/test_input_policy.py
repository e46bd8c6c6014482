"""The input policy: what every entry point accepts (money, text, dates, addresses, contacts)."""

from __future__ import annotations

import unicodedata
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ispbill_core.input_policy import (
    DEFAULT_MONEY_MAXIMUM,
    Address,
    BillingDate,
    Email,
    MoneyText,
    Name,
    NasAddress,
    Period,
    Phone,
    Rate,
    SignedMoneyText,
    money_in,
    radius_username_key,
    refused_character,
)
from ispbill_core.money import Money

pytestmark = pytest.mark.unit


class Form(BaseModel):
    amount: SignedMoneyText = "0"
    price: MoneyText = "0"
    name: Name = "x"
    address: Address = ""
    on: BillingDate = date(2026, 1, 1)
    period: Period = "2026-01"
    nas: NasAddress = "192.0.2.1"
    email: Email = "a@example.com"
    phone: Phone = ""
    rate: Rate = Decimal("0.15")


def refused(**field: object) -> bool:
    try:
        Form(**field)  # type: ignore[arg-type]
    except ValidationError:
        return True
    return False


# -- money


@given(st.decimals(min_value=-DEFAULT_MONEY_MAXIMUM, max_value=DEFAULT_MONEY_MAXIMUM, places=2))
def test_every_plain_amount_within_the_maximum_round_trips(value: Decimal) -> None:
    text = format(value, "f")
    assert Form(amount=text).amount == text
    assert money_in(text, "USD", allow_negative=True) == Money.of(value, "USD")


@given(st.text(max_size=30))
@example("1e2")
@example("1E+2")
@example("+1")
@example(" 1")
@example("1 ")
@example("1\n")
@example("NaN")
@example("sNaN")
@example("Infinity")
@example("-inf")
@example("1_000")
@example("1,00")
@example(".5")
@example("5.")
@example("--5")
@example("\u0661\u0662")  # Arabic-Indic 12
@example("\u09e7\u09e8")  # Bengali 12
@example("\uff11")  # fullwidth 1
def test_anything_but_ascii_digits_an_optional_minus_and_point_is_refused(text: str) -> None:
    plain = (
        (
            text.lstrip("-").replace(".", "", 1).isascii()
            and text.lstrip("-").replace(".", "", 1).isdigit()
            and text.count("-") <= 1
            and not text.startswith(("-.", "."))
            and not text.endswith(".")
            and text.lstrip("-")[:1].isdigit()
            and (text.count("-") == 0 or text.startswith("-"))
            and len(text.lstrip("-").partition(".")[0]) <= 12
            and len(text.partition(".")[2]) <= 3
            and abs(Decimal(text)) <= DEFAULT_MONEY_MAXIMUM
        )
        if text
        else False
    )
    assert refused(amount=text) is not plain


@pytest.mark.parametrize("value", [30, 29.99, True, None, Decimal("1")])
def test_money_is_never_a_json_number(value: object) -> None:
    with pytest.raises(ValidationError, match=r"not a JSON number|string"):
        Form(amount=value)  # type: ignore[arg-type]


def test_unsigned_money_refuses_a_minus() -> None:
    assert Form(price="0").price == "0"
    assert refused(price="-1")
    assert Form(amount="-1").amount == "-1"


def test_the_maximum_is_per_currency_and_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert money_in("999999999999.99", "USD").amount == Decimal("999999999999.99")
    assert DEFAULT_MONEY_MAXIMUM < 10**12
    with pytest.raises(ValueError, match="not a plain decimal"):
        money_in("1000000000000", "USD")
    monkeypatch.setenv("ISPBILL_MONEY_MAX_USD", "5000")
    with pytest.raises(ValueError, match="more than 5000 USD"):
        money_in("5000.01", "USD")
    assert money_in("5000.01", "EUR").amount == Decimal("5000.01")
    monkeypatch.setenv("ISPBILL_MONEY_MAX", "10")
    with pytest.raises(ValueError, match="more than 10 EUR"):
        money_in("11", "EUR")


def test_the_currencys_minor_unit_bounds_the_decimals() -> None:
    assert money_in("1.5", "USD").amount == Decimal("1.50")
    with pytest.raises(ValueError):
        money_in("1.005", "USD")
    with pytest.raises(ValueError):
        money_in("1.5", "JPY")
    assert money_in("1.005", "KWD").amount == Decimal("1.005")
    with pytest.raises(ValueError, match="negative"):
        money_in("-1", "USD")


@pytest.mark.parametrize("rate", ["0", "0.15", "1", "0.123456", "1.0"])
def test_plain_rates_between_0_and_1(rate: str) -> None:
    assert Form(rate=rate).rate == Decimal(rate)


@pytest.mark.parametrize("rate", [0.15, "1.5", "-0.1", "1e-1", "0.1234567", "NaN", "15%", ""])
def test_other_rates_are_refused(rate: object) -> None:
    assert refused(rate=rate)


# -- text


@given(st.text(min_size=1, max_size=50))
def test_text_with_a_refused_character_is_refused_and_other_text_kept(text: str) -> None:
    bad = any(
        unicodedata.category(c) in {"Cc", "Zl", "Zp", "Cs"}
        or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
        for c in text
    )
    assert (refused_character(text) is not None) is bad
    if bad:
        assert refused(name=text)
    elif text == text.strip():
        assert Form(name=text).name == text


@pytest.mark.parametrize(
    "name",
    ["Line\nbreak", "tab\there", "nul\x00", "del\x7f", "c1\x85", "ls\u2028", "ps\u2029",
     "\u202eevil", "iso\u2066late", "bom\ufeff", " padded", "padded ", "", "x" * 201],
)  # fmt: skip
def test_names_refuse_control_characters_bidi_overrides_and_padding(name: str) -> None:
    assert refused(name=name)


@pytest.mark.parametrize(
    "name",
    ["Zoë Ångström", "রহিম উদ্দিন", "محمد", "O'Brien-Smith", "李小龍", "Ana\u200dBel", "x" * 200],
)
def test_names_in_any_script_are_accepted(name: str) -> None:
    assert Form(name=name).name == name


# -- dates and periods


@pytest.mark.parametrize("on", ["0001-01-01", "1999-12-31", "2100-01-01", "9999-12-31"])
def test_dates_outside_this_century_are_refused(on: str) -> None:
    assert refused(on=on)


@pytest.mark.parametrize("on", ["2000-01-01", "2026-02-28", "2099-12-31"])
def test_dates_within_it_are_accepted(on: str) -> None:
    assert Form(on=on).on == date.fromisoformat(on)


@pytest.mark.parametrize(
    "period",
    ["0000-01", "1999-12", "2100-01", "9999-12", "2026-13", "2026-1", "2026-00", "2026-01\n",
     "\uff12\uff10\uff12\uff16-01"],
)  # fmt: skip
def test_periods_outside_the_range_or_form_are_refused(period: str) -> None:
    assert refused(period=period)


# -- addresses and contacts


@pytest.mark.parametrize(
    "ip",
    ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "239.1.1.1", "ff02::1", "169.254.0.1",
     "fe80::1", "240.0.0.1", "not-an-ip", "1.2.3.4.5", "::ffff:0.0.0.0", "x" * 100],
)  # fmt: skip
def test_nas_addresses_that_are_not_one_unicast_host_are_refused(ip: str) -> None:
    assert refused(nas=ip)


@pytest.mark.parametrize(
    ("ip", "kept"),
    [("192.0.2.1", "192.0.2.1"), ("10.0.0.1", "10.0.0.1"), ("127.0.0.1", "127.0.0.1"),
     ("::1", "::1"), ("2001:db8::1", "2001:db8::1"), ("::ffff:192.0.2.1", "192.0.2.1")],
)  # fmt: skip
def test_unicast_addresses_loopback_included_are_accepted_in_one_spelling(
    ip: str, kept: str
) -> None:
    assert Form(nas=ip).nas == kept


@pytest.mark.parametrize("phone", ["+8801712345678", "+14155550100", ""])
def test_e164_phones(phone: str) -> None:
    assert Form(phone=phone).phone == phone


@pytest.mark.parametrize("phone", ["01712345678", "+0123456789", "+1 415 555 0100", "+1234",
                                   "+1234567890123456", "+৮৮০১৭১২৩৪৫৬৭৮"])  # fmt: skip
def test_other_phones_are_refused(phone: str) -> None:
    assert refused(phone=phone)


def test_emails_are_checked_and_bounded() -> None:
    assert refused(email="not-an-address")
    assert refused(email="a@example.com\nBcc: x@example.com")
    assert refused(email="a" * 250 + "@example.com")


def test_radius_usernames_compare_by_their_case_folded_key() -> None:
    assert radius_username_key("Alice") == radius_username_key("ALICE") == "alice"
    assert radius_username_key("STRASSE") == radius_username_key("straße")
