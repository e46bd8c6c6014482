"""The ledger's hash chain: the link's exact bytes, and the walker's verdicts (ADR 0031)."""

from __future__ import annotations

import hashlib

import pytest

from ispbill_core.eventstore.chain import GENESIS, ChainWalker, link, parse_anchor

pytestmark = pytest.mark.unit

ID = "0b5e7a3c-1111-2222-3333-444455556666"


def test_the_link_is_fixed_forever() -> None:
    """Every ledger's stored hashes depend on these bytes: changing them breaks every chain."""
    by_hand = hashlib.sha256(
        GENESIS
        + f"36:{ID}11:customer-c10:18:CustomerRegistered1:".encode()
        + '15:{"name":"রহিম"}13:{"actor":"x"}'.encode()
    ).hexdigest()
    got = link(
        GENESIS,
        ID.upper(),
        "customer-c1",
        0,
        "CustomerRegistered",
        1,
        '{"name":"রহিম"}',
        '{"actor":"x"}',
    )
    assert (
        got.hex() == by_hand == "a7c863e179306b3df686b428fe8b9806ca917bb74fdd1c39caf6aff5036c71cf"
    )


def test_fields_cannot_be_shifted_into_each_other() -> None:
    a = link(GENESIS, ID, "ab", 1, "T", 1, "{}", "{}")
    b = link(GENESIS, ID, "a", 1, "bT", 1, "{}", "{}")
    assert a != b


def _rows(n: int) -> list[tuple[int, str, str, int, str, int, str, str, bytes | None]]:
    rows = []
    previous = GENESIS
    for gp in range(1, n + 1):
        data = f'{{"n":{gp}}}'
        previous = link(previous, ID, "s", gp - 1, "T", 1, data, "{}")
        rows.append((gp, ID, "s", gp - 1, "T", 1, data, "{}", previous))
    return rows


def test_rows_before_the_chain_are_counted_not_broken() -> None:
    legacy = [(gp, ID, "s", 0, "T", 1, "{}", "{}", None) for gp in (1, 2)]
    walker = ChainWalker()
    walker.feed(legacy + [(gp + 2, *rest) for gp, *rest in _rows(3)])  # type: ignore[misc]
    report = walker.finish()
    assert report.ok and report.unchained == 2 and report.first_chained == 3 and report.checked == 3


def test_a_hash_cleared_inside_the_chain_is_named() -> None:
    rows = _rows(4)
    rows[2] = (*rows[2][:8], None)
    walker = ChainWalker()
    assert not walker.feed(rows)
    assert walker.finish().broken_at == 3


def test_pages_fed_one_after_another_are_one_chain() -> None:
    rows = _rows(10)
    walker = ChainWalker({7: rows[6][8]})  # type: ignore[dict-item]
    assert walker.feed(rows[:4]) and walker.feed(rows[4:])
    report = walker.finish()
    assert report.ok and report.anchors_checked == [7] and report.head_position == 10


def test_anchors_parse_strictly() -> None:
    assert parse_anchor(f"12:{'ab' * 32}") == (12, bytes.fromhex("ab" * 32))
    for bad in ("12", f"0:{'ab' * 32}", "x:ab", f"3:{'ab' * 31}", f"3:{'zz' * 32}"):
        with pytest.raises(ValueError, match="POSITION:SHA256HEX"):
            parse_anchor(bad)
