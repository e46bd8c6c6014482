"""The scheduled bill run: each period closed by a durable timer when it ends (ADR 0027).

A period's bill run is the timer `bill-run-<period>` (kind `invoicing.bill-run`), due on the
first day of the next period at `BillingSettings.bill_run_at` in the ISP's time zone (02:00 by
default: a daylight-saving change at that hour moves it to the nearest real time). When it
fires it runs the same bill run as `ispbill bill-run` (idempotent: customers invoiced already
are skipped) and schedules the next period's. A process that starts schedules the current
period's run (a no-op when it is there), so an installation keeps billing once started; a run
missed while everything was down fires as soon as a runner is back. The first period after
installation is billed by hand or by this schedule, whichever comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, time
from typing import Any

from invoicing.application.close_billing_period import (
    SCHEDULED_ACTOR,
    BillRunCatalogue,
    close_billing_period,
)
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import Clock
from ispbill_core.events import utc
from ispbill_core.eventstore import EventStore
from ispbill_core.periods import BillingPeriod
from ispbill_core.timers import DueTimer, Timers

log = logging.getLogger(__name__)

BILL_RUN_KIND = "invoicing.bill-run"


def bill_run_timer_id(period: BillingPeriod) -> str:
    return f"bill-run-{period}"


def bill_run_due(period: BillingPeriod, settings: BillingSettings) -> datetime:
    """When `period`'s bill run is due (UTC): its next period's first day at `bill_run_at`,
    local. A wall time that happens twice that day (daylight saving ends) is the first one;
    one that does not happen (it begins) is read with the offset before the change, as
    zoneinfo does with fold=0."""
    at = settings.bill_run_at or time(2, 0)
    return utc(datetime.combine(period.next.first_day, at, tzinfo=settings.timezone))


class BillRunSchedule:
    """Keeps the next bill run scheduled and runs the due ones."""

    def __init__(
        self,
        store: EventStore,
        timers: Timers,
        clock: Clock,
        settings: BillingSettings,
        catalogue: Callable[[], Awaitable[BillRunCatalogue]] | None = None,
    ) -> None:
        self._store = store
        self._timers = timers
        self._clock = clock
        self._settings = settings
        self._catalogue = catalogue

    @property
    def enabled(self) -> bool:
        return self._settings.bill_run_at is not None

    async def ensure_scheduled(self) -> BillingPeriod | None:
        """Schedule the bill run of the period running now; None when the schedule is off."""
        if not self.enabled:
            return None
        now = self._clock.now()
        period = BillingPeriod.containing(now, self._settings.timezone)
        await self._schedule(period)
        return period

    async def _schedule(self, period: BillingPeriod) -> None:
        due = bill_run_due(period, self._settings)
        await self._timers.schedule(
            bill_run_timer_id(period), due, BILL_RUN_KIND, {"period": str(period)}
        )

    def timer_handlers(self) -> dict[str, Callable[[DueTimer, datetime], Awaitable[Any]]]:
        return {BILL_RUN_KIND: self.fire}

    async def fire(self, timer: DueTimer, now: datetime) -> None:
        """Run the period's bill run, then schedule the next period's (before the run, so
        that a run that fails for good, parked, still leaves next month scheduled)."""
        period = BillingPeriod.parse(str(timer.payload["period"]))
        if self.enabled:
            await self._schedule(period.next)
        report = await close_billing_period(
            self._store,
            self._clock,
            self._settings,
            str(period),
            self._catalogue,
            actor=SCHEDULED_ACTOR,
        )
        log.info(
            "scheduled bill run %s: issued %d, already issued %d, skipped %d, failed %d",
            period,
            len(report.issued),
            len(report.already_issued),
            len(report.skipped),
            len(report.failed),
        )
        for customer, why in report.skipped.items():
            log.warning("scheduled bill run %s: skipped %s: %s", period, customer, why)
        for customer, why in report.failed.items():
            log.error("scheduled bill run %s: FAILED %s: %s", period, customer, why)
