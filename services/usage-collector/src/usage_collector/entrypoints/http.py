"""REST endpoints of the usage collector, under /api/v1: importing another server's history.

`POST /api/v1/collector/imports/radius-detail` takes accounting requests that a client (the
`ispbill import radius-detail` command) read from FreeRADIUS detail files, screens each with the
NAS registry and the live path's decoding, and publishes the records in one call. Requests that
cannot be imported (unknown NAS, not an accounted record) are answered one by one in a 200; a
body that is not what the schema says, or a `nas` that is not registered, is a 422. Sending the
same batch again imports nothing new: the record ids are derived from the records.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
)

from ispbill_core.access import USAGE_IMPORT
from ispbill_core.bus import BusError
from ispbill_core.clock import Clock
from ispbill_core.input_policy import moment_in_range
from ispbill_core.web import requires
from usage_collector.application.import_detail import (
    ImportedRequest,
    ImportReport,
    UnknownNas,
    find_nas,
    import_accounting_requests,
)
from usage_collector.application.nas_registry import NasRegistry
from usage_collector.application.ports import AccountingPublisher
from usage_collector.domain.accounting_record import AttributeValue

#: The import route: it takes up to MAX_RECORDS_PER_IMPORT records a call, so the HTTP edge
#: gives it its own body limit (ISPBILL_MAX_IMPORT_BODY_BYTES, 64 MiB), not the 1 MiB of others.
RADIUS_DETAIL_IMPORT_PATH = "/api/v1/collector/imports/radius-detail"

#: One POST is one publish call: big enough for throughput, small enough to retry cheaply.
MAX_RECORDS_PER_IMPORT = 10_000


class Octets(BaseModel):
    """An attribute value that is not text: octets, or a string that is not UTF-8."""

    model_config = ConfigDict(extra="forbid")

    hex: Annotated[str, Field(pattern=r"^([0-9a-fA-F]{2})*$")]


WireValue = StrictStr | StrictInt | Octets


class ImportedRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: Annotated[str, Field(max_length=2000, description="where it was read, e.g. file:line")]
    attributes: dict[str, list[WireValue]] = Field(
        description="attribute name -> values, as a RADIUS dictionary types them: enumerations "
        'by name ("Interim-Update"), integers, text, addresses as text, dates as unix seconds, '
        'octets as {"hex": "..."}'
    )
    nas_addresses: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=16,
        description="addresses that may name the NAS, best first; the first registered counts",
    )
    received_at: Annotated[AwareDatetime, AfterValidator(moment_in_range)] = Field(
        description="when the other server received it (2000-01-01 to 2099-12-31)"
    )


class RadiusDetailImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: Annotated[list[ImportedRequestIn], Field(max_length=MAX_RECORDS_PER_IMPORT)]
    nas: str | None = Field(
        default=None,
        max_length=64,
        description="attribute every record to this NAS (its id or address), not to the NAS "
        "registered at the records' addresses",
    )
    dry_run: bool = Field(default=False, description="screen the records, publish nothing")


class SkippedRecordOut(BaseModel):
    ref: str
    reason: str
    detail: str
    address: str | None = None


class ImportResult(BaseModel):
    received: int
    imported: int = Field(description="distinct records published (or that would be)")
    repeated: int = Field(description="requests that were the same record as another one")
    dry_run: bool
    skipped: dict[str, int] = Field(description="reason -> how many")
    unknown_nas: dict[str, int] = Field(description="address -> requests with no NAS there")
    skipped_records: list[SkippedRecordOut]

    @classmethod
    def from_report(cls, report: ImportReport) -> ImportResult:
        return cls(
            received=report.received,
            imported=report.imported,
            repeated=report.repeated,
            dry_run=report.dry_run,
            skipped=report.skipped_by_reason,
            unknown_nas=report.unknown_nas,
            skipped_records=[
                SkippedRecordOut(
                    ref=s.ref, reason=s.reason.value, detail=s.detail, address=s.address
                )
                for s in report.skipped
            ],
        )


def encode_imported_request(
    ref: str,
    attributes: dict[str, list[AttributeValue]],
    nas_addresses: tuple[str, ...] | list[str],
    received_at: datetime,
) -> dict[str, Any]:
    """One record of the request body (what a client sends)."""
    return {
        "ref": ref,
        "attributes": {
            name: [{"hex": v.hex()} if isinstance(v, bytes) else v for v in values]
            for name, values in attributes.items()
        },
        "nas_addresses": list(nas_addresses),
        "received_at": received_at.isoformat(),
    }


def _decoded(record: ImportedRequestIn) -> ImportedRequest:
    return ImportedRequest(
        ref=record.ref,
        attributes={
            name: [bytes.fromhex(v.hex) if isinstance(v, Octets) else v for v in values]
            for name, values in record.attributes.items()
        },
        nas_addresses=record.nas_addresses,
        received_at=record.received_at,
    )


def collector_import_router(
    registry: NasRegistry,
    publisher: AccountingPublisher,
    clock: Clock,
) -> APIRouter:
    """The import endpoint over the collector's NAS registry and publisher; `nas` may name a
    NAS by its address or by its id."""
    router = APIRouter(prefix="/api/v1", tags=["usage-collector"])

    @router.post(
        RADIUS_DETAIL_IMPORT_PATH.removeprefix("/api/v1"), dependencies=[requires(USAGE_IMPORT)]
    )
    async def import_radius_detail(body: RadiusDetailImport) -> ImportResult:
        """Import accounting requests read from FreeRADIUS detail files; idempotent."""
        nas = None
        if body.nas is not None:
            try:
                nas = await find_nas(body.nas, registry)
            except UnknownNas as exc:
                raise HTTPException(422, str(exc)) from None
        try:
            report = await import_accounting_requests(
                [_decoded(r) for r in body.records],
                registry=registry,
                publisher=publisher,
                now=clock.now(),
                nas=nas,
                dry_run=body.dry_run,
            )
        except BusError as exc:
            # Nothing of this batch is known to be durable; the same batch may be sent again.
            raise HTTPException(503, f"the records could not be published: {exc}") from None
        return ImportResult.from_report(report)

    return router
