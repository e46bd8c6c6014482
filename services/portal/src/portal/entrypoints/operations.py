"""REST endpoints for operators: projections (status, lag, rebuild), parked events, audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from ispbill_core.access import (
    AUDIT_READ,
    PARKED_READ,
    PARKED_WRITE,
    PROJECTIONS_ADMIN,
    PROJECTIONS_READ,
)
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import MAX_CURSOR, Instant
from ispbill_core.projections import ParkedStatus, ReadModelDatabase
from ispbill_core.projections.audit import audit_log
from ispbill_core.projections.projector import Projector
from ispbill_core.web import requires

#: How many events behind a projection is counted exactly; past that, "at least".
LAG_COUNT_LIMIT = 10_000


class ProjectionStatus(BaseModel):
    name: str
    version: int
    #: global position of the last event folded (or looked past), saved with the rows
    position: int
    #: the ledger's head when asked
    head: int
    #: events of the projection's types after its position (counted up to LAG_COUNT_LIMIT)
    behind: int
    behind_at_least: bool
    handled: int
    parked: int
    failures: int
    last_error: str
    updated_at: datetime | None


class ParkedAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")


class AuditEntry(BaseModel):
    position: int
    occurred_at: str
    recorded_at: str
    actor: str
    type: str
    stream: str
    customer_id: str | None
    data: Any


def operations_router(
    store: EventStore, read_models: ReadModelDatabase, projector: Projector | None
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["operations"])

    @router.get("/projections", dependencies=[requires(PROJECTIONS_READ)])
    async def projections() -> list[ProjectionStatus]:
        """Every projection with its position and lag (events of its types not folded yet)."""
        head = await store.head_position()
        states = {s.name: s for s in await read_models.states()}
        runners = projector.runners if projector is not None else {}
        out = []
        for name in sorted(set(states) | set(runners)):
            state = states.get(name)
            runner = runners.get(name)
            position = state.position if state is not None else 0
            behind = 0
            if runner is not None:
                pending = await store.read_all(
                    after=position, limit=LAG_COUNT_LIMIT, types=runner.projection.types
                )
                behind = len(pending)
            out.append(
                ProjectionStatus(
                    name=name,
                    version=state.version if state is not None else runner.projection.version,  # type: ignore[union-attr]
                    position=position,
                    head=head,
                    behind=behind,
                    behind_at_least=behind >= LAG_COUNT_LIMIT,
                    handled=runner.handled if runner else 0,
                    parked=runner.parked if runner else 0,
                    failures=runner.failures if runner else 0,
                    last_error=runner.last_error if runner else "",
                    updated_at=state.updated_at if state is not None else None,
                )
            )
        return out

    @router.post(
        "/projections/{name}/rebuild",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=[requires(PROJECTIONS_ADMIN)],
    )
    async def rebuild(
        name: Annotated[str, Path(max_length=80, pattern=r"^[a-z0-9.-]+$")],
    ) -> dict[str, str]:
        """Drop the projection's tables and refill them from position 0, while reads go on
        (answering from the tables as they refill). Follow it on GET /api/v1/projections."""
        if projector is None or name not in projector.runners:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no projection {name!r} runs here")
        projector.rebuild(name)
        return {"projection": name, "status": "rebuilding"}

    @router.get("/parked", dependencies=[requires(PARKED_READ)])
    async def list_parked(
        consumer: str | None = Query(default=None, max_length=80),
        status_: str | None = Query(
            default=ParkedStatus.PARKED,
            alias="status",
            pattern=r"^(parked|retry|discarded|resolved|all)$",
        ),
    ) -> list[dict[str, Any]]:
        """Events a consumer could not handle (bad data, a bug), with the reason: each one an
        alert. The consumer went on; retry one once its cause is fixed, or discard it."""
        chosen = None if status_ == "all" else status_
        return [p.as_dict() for p in await read_models.parked(consumer=consumer, status=chosen)]

    async def _found(parked_id: int) -> Any:
        entry = await read_models.parked_event(parked_id)
        if entry is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no parked event {parked_id}")
        return entry

    @router.get("/parked/{parked_id}", dependencies=[requires(PARKED_READ)])
    async def show_parked(parked_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict[str, Any]:
        """One parked event with the whole event as recorded."""
        entry = await _found(parked_id)
        shown: dict[str, Any] = entry.as_dict(with_envelope=True)
        return shown

    @router.post("/parked/{parked_id}/retry", dependencies=[requires(PARKED_WRITE)])
    async def retry_parked(parked_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict[str, Any]:
        """Hand the event to its consumer again (within seconds); if it fails again it is
        parked again with the new reason."""
        entry = await _found(parked_id)
        if entry.status not in (ParkedStatus.PARKED, ParkedStatus.RETRY):
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"parked event {parked_id} is {entry.status}"
            )
        await read_models.set_parked_status(parked_id, ParkedStatus.RETRY)
        done: dict[str, Any] = (await _found(parked_id)).as_dict()
        return done

    @router.post("/parked/{parked_id}/discard", dependencies=[requires(PARKED_WRITE)])
    async def discard_parked(
        parked_id: Annotated[int, Path(ge=1, le=2**62)], action: ParkedAction
    ) -> dict[str, Any]:
        """Give up on the event for its consumer (kept, listed with status=discarded)."""
        entry = await _found(parked_id)
        if entry.status == ParkedStatus.RESOLVED:
            raise HTTPException(status.HTTP_409_CONFLICT, f"parked event {parked_id} is resolved")
        reason = f"discarded: {action.reason}" if action.reason else None
        await read_models.set_parked_status(parked_id, ParkedStatus.DISCARDED, reason)
        done: dict[str, Any] = (await _found(parked_id)).as_dict()
        return done

    @router.get("/audit", dependencies=[requires(AUDIT_READ)])
    async def audit(
        actor: str | None = Query(default=None, max_length=120),
        customer_id: str | None = Query(default=None, max_length=64),
        since: Annotated[Instant | None, Query()] = None,
        limit: int = Query(default=100, ge=1, le=10_000),
        before: int | None = Query(
            default=None,
            ge=1,
            le=MAX_CURSOR,
            description="the `position` of the last entry of the page before",
        ),
    ) -> list[AuditEntry]:
        """Who recorded what and when, newest first: every event's actor (a staff user, an API
        token's owner, or a named system component), by actor, customer and time."""
        found = await audit_log(
            read_models,
            actor=actor,
            customer_id=customer_id,
            since=since,
            limit=limit,
            before=before,
        )
        return [AuditEntry.model_validate(e) for e in found]

    return router
