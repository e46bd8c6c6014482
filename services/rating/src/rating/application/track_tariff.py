"""Use case: follow rated usage in ledger order and emit the tariff thresholds it reaches
(`rating.domain.tariff`): QuotaThresholdReached at 80 % and 100 % of the allowance, and
FairUsageLimitReached, each once per subscription and period.

A single subscriber of the global log does this, not the rating workers: two workers rate
sessions of one subscriber side by side, and only the log's order tells what was used first.
Its state per (subscription, period) is loaded from the ledger the first time it is needed
(the period's usage before the event at hand, and the thresholds already emitted), then kept
in memory; every event it emits has an id derived from (subscription, period, threshold), so a
replay, a restart from an old checkpoint, or a second tracker emits nothing twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from ispbill_core.contracts.accounts import (
    PlanTerms,
    TopUpPurchased,
    plan_stream,
    subscription_topups_stream,
)
from ispbill_core.contracts.rating import (
    FairUsageLimitReached,
    QuotaThresholdReached,
    UsageRated,
    tariff_stream,
    usage_stream,
)
from ispbill_core.events import RecordedEvent, deterministic_id, encoded_event
from ispbill_core.eventstore import ANY, EventStore
from ispbill_core.service_history import version_on
from rating.application.rate_accounting_record import ACTOR, plan_versions_of
from rating.domain.tariff import PeriodTariff, TopUp, counted, threshold_key

TARIFF_TYPES = frozenset({UsageRated.event_type, TopUpPurchased.event_type})


class TariffTracker:
    """The tracker's memory: periods (least recently used dropped past `max_periods`), plans
    and top-ups per subscription. Anything it holds can be dropped and read again."""

    def __init__(self, store: EventStore, *, max_periods: int = 100_000) -> None:
        self.store = store
        self.max_periods = max_periods
        self.periods: OrderedDict[tuple[str, str], PeriodTariff] = OrderedDict()
        self.plans: dict[str, list[PlanTerms]] = {}
        self.topups: dict[str, list[TopUp]] = {}

    def forget(self) -> None:
        self.periods.clear()
        self.plans.clear()
        self.topups.clear()

    async def handle(self, event: RecordedEvent) -> None:
        """One event (the subscriber's per-event path)."""
        await self.handle_batch([event])

    async def handle_batch(
        self, batch: Sequence[RecordedEvent], checkpoint: tuple[str, int] | None = None
    ) -> bool:
        """Fold the batch in order; append what it reached (and the checkpoint) at once. On any
        failure the memory is dropped (it may hold part of the batch) and the error raised."""
        try:
            pending = []
            for recorded in batch:
                decoded = recorded.decode()
                if isinstance(decoded, TopUpPurchased):
                    self.topups.pop(decoded.subscription_id, None)  # read again when needed
                    continue
                assert isinstance(decoded, UsageRated)
                for reached in await self._add(recorded, decoded):
                    pending.append(reached)
            batches = [
                (
                    tariff_stream(e.subscription_id, e.period),
                    [
                        encoded_event(
                            e,
                            id=deterministic_id(
                                "tariff", e.subscription_id, e.period, threshold_key(e)
                            ),
                            occurred_at=e.reached_at,
                            actor=ACTOR,
                        )
                    ],
                    ANY,
                )
                for e in pending
            ]
            if batches or checkpoint is not None:
                await self.store.append_many(batches, checkpoint=checkpoint)
        except BaseException:
            self.forget()
            raise
        return checkpoint is not None

    async def _add(
        self, recorded: RecordedEvent, usage: UsageRated
    ) -> list[QuotaThresholdReached | FairUsageLimitReached]:
        key = (usage.subscription_id, usage.period)
        state = self.periods.get(key)
        if state is None:
            state = await self._load(recorded, usage)
            self.periods[key] = state
            while len(self.periods) > self.max_periods:
                self.periods.popitem(last=False)
        else:
            self.periods.move_to_end(key)
        if recorded.global_position <= state.position:
            return []  # delivered again (a subscriber restarting from an older checkpoint)
        state.position = recorded.global_position
        return state.add(usage, await self._plan(usage), await self._topups(usage.subscription_id))

    async def _load(self, recorded: RecordedEvent, usage: UsageRated) -> PeriodTariff:
        """The period as it stood just before `recorded`: its earlier usage, counted, and the
        thresholds already emitted (whenever: a replay emits none again)."""
        state = PeriodTariff(position=recorded.global_position - 1)
        for earlier in await self.store.read_stream(usage_stream(usage.customer_id, usage.period)):
            if earlier.global_position >= recorded.global_position:
                break
            before = earlier.decode()
            assert isinstance(before, UsageRated)
            if before.subscription_id == usage.subscription_id:
                state.used += counted(before, await self._plan(before))
        for emitted in await self.store.read_stream(
            tariff_stream(usage.subscription_id, usage.period)
        ):
            decoded = emitted.decode()
            assert isinstance(decoded, QuotaThresholdReached | FairUsageLimitReached)
            state.reached.add(threshold_key(decoded))
        return state

    async def _plan(self, usage: UsageRated) -> PlanTerms | None:
        """The plan version the usage was rated on (None: rated before buckets, or unknown)."""
        if usage.plan_id is None or usage.plan_version is None:
            return None
        versions = self.plans.get(usage.plan_id)
        if versions is None or len(versions) < usage.plan_version:
            versions = plan_versions_of(await self.store.read_stream(plan_stream(usage.plan_id)))
            self.plans[usage.plan_id] = versions
        if len(versions) < usage.plan_version:
            return version_on(versions, usage.occurred_at.date()) if versions else None
        return versions[usage.plan_version - 1]

    async def _topups(self, subscription_id: str) -> list[TopUp]:
        found = self.topups.get(subscription_id)
        if found is None:
            found = []
            for recorded in await self.store.read_stream(
                subscription_topups_stream(subscription_id)
            ):
                bought = recorded.decode()
                assert isinstance(bought, TopUpPurchased)
                found.append(
                    TopUp(bought.purchase_id, bought.bytes, bought.valid_from, bought.valid_until)
                )
            self.topups[subscription_id] = found
        return found
