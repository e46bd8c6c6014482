"""Small fixes that let aiokafka (0.14) and faust work against Tansu as against Kafka.

1. InitProducerId v3. aiokafka only speaks v0 of InitProducerId, which has no producer id or
   epoch fields. Tansu rejects such a request (UNKNOWN_SERVER_ERROR), so an idempotent producer
   cannot start. The Java client sends v3+ (KIP-360, Kafka 2.5+) with producer id and epoch
   -1; the shim teaches aiokafka's sender the same request. The version is still negotiated
   per broker: a broker without v3 keeps getting v0.
2. LeaveGroup at generation 0. Tansu numbers a consumer group's first generation 0, Kafka
   numbers it 1, and aiokafka only sends LeaveGroup when the generation is > 0. Without the
   shim a consumer that stops in a group's first generation does not leave, and the next
   member's join waits for its session to time out. On Kafka a joined member never has
   generation 0, so nothing changes there.

Both are idempotent and applied by the adapters that need them (install_kafka_compat()).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.consumer import group_coordinator as _group_coordinator
from aiokafka.errors import KafkaError
from aiokafka.producer import sender as _aiokafka_sender
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

log = logging.getLogger(__name__)

_installed = False


class _InitProducerIdResponseV3(Response):  # type: ignore[misc] # aiokafka is untyped
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _InitProducerIdRequestV3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = _InitProducerIdResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _InitProducerIdRequest(Request[InitProducerIdRequest_v0 | _InitProducerIdRequestV3]):  # type: ignore[misc]
    """Drop-in for aiokafka's InitProducerIdRequest that can also build v3."""

    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(
        self, request_struct_class: type[InitProducerIdRequest_v0 | _InitProducerIdRequestV3]
    ) -> InitProducerIdRequest_v0 | _InitProducerIdRequestV3:
        if request_struct_class.API_VERSION == 0:
            return request_struct_class(self._transactional_id, self._transaction_timeout_ms)
        # -1/-1: a new producer id, not the bump of an existing producer's epoch.
        return request_struct_class(
            self._transactional_id, self._transaction_timeout_ms, -1, -1, {}
        )


def _leave_group_at_generation_zero() -> None:
    coordinator: Any = _group_coordinator.GroupCoordinator
    original = coordinator._maybe_leave_group

    async def _maybe_leave_group(self: Any) -> None:
        if self.generation == 0 and self._group_instance_id is None:
            try:
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except KafkaError as err:
                log.warning("LeaveGroup (generation 0) failed: %s", err)
        await original(self)

    coordinator._maybe_leave_group = _maybe_leave_group


def install_kafka_compat() -> None:
    """Apply both fixes to aiokafka, once per process."""
    global _installed
    if _installed:
        return
    sender: Any = _aiokafka_sender
    sender.InitProducerIdRequest = _InitProducerIdRequest
    _leave_group_at_generation_zero()
    _installed = True
