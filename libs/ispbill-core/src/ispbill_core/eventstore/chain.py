"""The ledger's hash chain: each row of the SQLite and PostgreSQL event tables carries
`chain_hash` = SHA-256(previous row's chain_hash + the row's own fields), written in the
append's transaction under the append lock (ADR 0031).

What it finds: a row edited in place (its hash no longer matches its fields), a row deleted or
moved (the next row no longer follows the one before it), a hash cleared. What it cannot find
alone: the newest rows deleted, or the whole chain recomputed by someone who can write the
database; an auditor keeps the head (`ChainReport.head_position`, `head_hash`) somewhere else
and checks it later as an anchor, which finds both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

#: The hash the first chained row follows.
GENESIS = bytes(32)


def link(
    previous: bytes,
    event_id: str,
    stream: str,
    stream_position: int,
    type_: str,
    version: int,
    data: str,
    metadata: str,
) -> bytes:
    """The chain hash of a row: SHA-256 of the previous row's hash and the row's fields as
    stored (the data and metadata JSON text as written), each text after its length in code
    points, so that no two rows hash the same bytes. 1.2 us a row (bench: ADR 0031). The
    global position is not hashed: PostgreSQL's sequence may skip numbers on a rollback, and
    the chain's order is the global order itself, so a row moved or removed breaks the next
    link anyway."""
    return hashlib.sha256(
        previous
        + f"{len(event_id)}:{event_id.lower()}{len(stream)}:{stream}{stream_position}:"
        f"{len(type_)}:{type_}{version}:{len(data)}:{data}{len(metadata)}:{metadata}".encode(
            "utf-8", "surrogatepass"
        )
    ).digest()


#: A row as the chain reads it: (global_position, id, stream, stream_position, type,
#: version, data, metadata, chain_hash or None).
ChainRow = tuple[int, str, str, int, str, int, str, str, bytes | None]


@dataclass
class ChainReport:
    """`ok` when every chained row follows the one before it and every anchor holds.
    `broken_at`: the first global position that does not, and `reason`. `unchained`: rows
    recorded before the chain existed (none on a ledger created since); the chain starts at
    `first_chained`."""

    checked: int = 0
    unchained: int = 0
    first_chained: int | None = None
    head_position: int = 0
    head_hash: str = GENESIS.hex()
    broken_at: int | None = None
    reason: str = ""
    anchors_checked: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken_at is None


class ChainWalker:
    """Checks rows in global order, page after page, keeping the last good hash."""

    def __init__(self, anchors: dict[int, bytes] | None = None) -> None:
        self.report = ChainReport()
        self._previous: bytes | None = None
        self._anchors = dict(anchors or {})

    def feed(self, rows: Iterable[ChainRow]) -> bool:
        """False once the chain is broken (the report says where): stop reading."""
        report = self.report
        for gp, id_, stream, sp, type_, version, data, metadata, stored in rows:
            if report.broken_at is not None:
                return False
            if stored is None:
                if self._previous is None:
                    report.unchained += 1  # before the chain began
                    continue
                return self._break(gp, "its chain hash was removed")
            expected = link(
                self._previous if self._previous is not None else GENESIS,
                id_,
                stream,
                sp,
                type_,
                version,
                data,
                metadata,
            )
            if bytes(stored) != expected:
                return self._break(
                    gp,
                    "the row does not match its chain hash: it was edited, or a row before"
                    " it was deleted or edited",
                )
            if self._previous is None:
                report.first_chained = gp
            anchor = self._anchors.pop(gp, None)
            if anchor is not None:
                if anchor != expected:
                    return self._break(gp, "the anchor's hash differs: the chain was rewritten")
                report.anchors_checked.append(gp)
            self._previous = expected
            report.checked += 1
            report.head_position = gp
            report.head_hash = expected.hex()
        return True

    def finish(self) -> ChainReport:
        report = self.report
        if report.broken_at is None and self._anchors:
            position = min(self._anchors)
            report.broken_at = position
            report.reason = (
                "an anchor's position is not in the ledger: rows were deleted"
                if position > report.head_position
                else "an anchor's position is not a chained row: rows were deleted"
            )
        return report

    def _break(self, position: int, reason: str) -> bool:
        self.report.broken_at = position
        self.report.reason = reason
        return False


def parse_anchor(text: str) -> tuple[int, bytes]:
    """`POSITION:HEXHASH`, as `ispbill audit chain verify` prints the head."""
    position, _, digest = text.partition(":")
    try:
        value = int(position)
        raw = bytes.fromhex(digest)
    except ValueError:
        raise ValueError(f"an anchor is POSITION:SHA256HEX, not {text[:80]!r}") from None
    if value < 1 or len(raw) != 32:
        raise ValueError(f"an anchor is POSITION:SHA256HEX (64 hex digits), not {text[:80]!r}")
    return value, raw
