"""Import accounting requests another RADIUS server logged (FreeRADIUS detail files).

Each request goes through the live path's decoding (`decode_accounting_request`) with the NAS
found by address in the same registry, so it gets the same record id as if ispbill had received
it: a request both received live and imported, or imported twice, is one fact. The NAS's
secret is not checked; the file is trusted as the operator's own history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from ispbill_core.events import utc
from usage_collector.application.nas_registry import NasRegistry, RegisteredNas, normalise_ip
from usage_collector.application.ports import AccountingPublisher
from usage_collector.application.publish_accounting_records import publish_accounting_records
from usage_collector.domain.accounting_record import (
    AccountingAttributes,
    AccountingRecord,
    InvalidAccountingRecord,
    decode_accounting_request,
)

#: A server clock can be a little ahead of ours; a day ahead is a wrong clock or a wrong file.
FUTURE_TOLERANCE = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ImportedRequest:
    """One accounting request as another server logged it.

    `ref` says where it came from ("detail-20260310:17"); `nas_addresses` are the addresses
    that may name its NAS, best first; `received_at` is when that server received it.
    """

    ref: str
    attributes: AccountingAttributes
    nas_addresses: Sequence[str]
    received_at: datetime


class SkipReason(StrEnum):
    UNKNOWN_NAS = "unknown_nas"
    INVALID_RECORD = "invalid_record"
    RECEIVED_IN_THE_FUTURE = "received_in_the_future"


@dataclass(frozen=True, slots=True)
class SkippedRequest:
    ref: str
    reason: SkipReason
    detail: str
    address: str | None = None


@dataclass
class ImportReport:
    """What became of the requests of one import call.

    `imported` counts distinct records handed to the bus; one the ledger (or rating, behind
    Kafka) already has is a no-op there, so importing again adds nothing, and the bus cannot
    tell us which ones those were. `repeated` counts requests that were the same record as
    another one of this call (a retransmission the old server logged twice).
    """

    received: int = 0
    imported: int = 0
    repeated: int = 0
    dry_run: bool = False
    skipped: list[SkippedRequest] = field(default_factory=list)

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for skipped in self.skipped:
            counts[skipped.reason.value] = counts.get(skipped.reason.value, 0) + 1
        return counts

    @property
    def unknown_nas(self) -> dict[str, int]:
        """Address -> how many requests came from it with no NAS registered there."""
        counts: dict[str, int] = {}
        for skipped in self.skipped:
            if skipped.reason is SkipReason.UNKNOWN_NAS:
                address = skipped.address or "(no address)"
                counts[address] = counts.get(address, 0) + 1
        return counts


class UnknownNas(LookupError):
    """The NAS named for an import is not registered."""


async def find_nas(nas: str, registry: NasRegistry) -> RegisteredNas:
    """The NAS an import is attributed to (`--nas`), by its address or by its id."""
    try:
        address: str | None = normalise_ip(nas)
    except ValueError:
        address = None
    if address is not None:
        found = registry.lookup(address)
        if found is None:
            raise UnknownNas(f"no NAS registered at {address}")
        return found
    found = registry.lookup_id(nas)
    if found is None:
        raise UnknownNas(f"no NAS registered with the id {nas!r}")
    return found


def screen_imported_request(
    request: ImportedRequest,
    registry: NasRegistry,
    *,
    now: datetime,
    nas: RegisteredNas | None = None,
) -> AccountingRecord | SkippedRequest:
    """The record a logged request reports, or why it is skipped. Never raises for bad input.

    Without `nas`, the first of the request's addresses that a NAS is registered at names it.
    """
    if nas is None:
        addresses = _normalised(request.nas_addresses)
        nas = next((n for n in map(registry.lookup, addresses) if n is not None), None)
        if nas is None:
            shown = ", ".join(addresses) or "none"
            return SkippedRequest(
                request.ref,
                SkipReason.UNKNOWN_NAS,
                f"no NAS registered at its addresses ({shown})",
                addresses[0] if addresses else None,
            )
    received_at = utc(request.received_at)
    if received_at > utc(now) + FUTURE_TOLERANCE:
        return SkippedRequest(
            request.ref,
            SkipReason.RECEIVED_IN_THE_FUTURE,
            f"received at {received_at.isoformat()}, after now: a wrong clock or file",
        )
    try:
        return decode_accounting_request(
            request.attributes, nas_id=nas.nas_id, nas_ip=nas.ip_address, received_at=received_at
        )
    except InvalidAccountingRecord as exc:
        return SkippedRequest(request.ref, SkipReason.INVALID_RECORD, str(exc))


async def import_accounting_requests(
    requests: Sequence[ImportedRequest],
    *,
    registry: NasRegistry,
    publisher: AccountingPublisher,
    now: datetime,
    nas: RegisteredNas | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """Screen every request, then publish the records in one call (none when `dry_run`).

    The publish is all or nothing and its ids are the records' own, so a caller whose call
    failed can send the same requests again.
    """
    report = ImportReport(received=len(requests), dry_run=dry_run)
    records: list[tuple[AccountingRecord, str | None]] = []
    for request in requests:
        screened = screen_imported_request(request, registry, now=now, nas=nas)
        if isinstance(screened, SkippedRequest):
            report.skipped.append(screened)
        else:
            records.append((screened, None))
    if dry_run:
        report.imported = len({record.record_id for record, _ in records})
    else:
        report.imported = await publish_accounting_records(publisher, records)
    report.repeated = len(records) - report.imported
    return report


def _normalised(addresses: Sequence[str]) -> list[str]:
    found: list[str] = []
    for address in addresses:
        try:
            ip = normalise_ip(address)
        except ValueError:
            continue
        if ip not in found:
            found.append(ip)
    return found
