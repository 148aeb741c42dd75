"""InsurerAdapterService: the router hands claims for simulated insurers here."""
from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

import asyncpg
import grpc
import structlog

from iclaim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from iclaim.crypto.envelope import CLAIM_REF_MAX, MAX_ENVELOPE_BYTES, sha256_hex
from iclaim_hub.internal.v1 import insurer_adapter_pb2, insurer_adapter_pb2_grpc
from services.insurer_adapter import metrics
from services.insurer_adapter.model import DeliveryConflict, NewDelivery
from services.insurer_adapter.store import DeliveryStore

log = structlog.get_logger("iclaim.adapter")

_TXID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_INSURER = re.compile(r"^[A-Z0-9_]{2,16}$")
# MOPH hcodes are 5 digits; the router has authenticated the hospital, so stay lenient.
_HOSPITAL = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_DB_DOWN = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


class InsurerAdapterServicer(insurer_adapter_pb2_grpc.InsurerAdapterServiceServicer):
    def __init__(
        self,
        store: DeliveryStore,
        is_simulated: Callable[[str], Awaitable[bool]],
        on_new_delivery: Callable[[], None],
    ) -> None:
        self._store = store
        self._is_simulated = is_simulated
        self._on_new = on_new_delivery

    async def DeliverClaim(
        self,
        request: insurer_adapter_pb2.DeliverClaimRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> insurer_adapter_pb2.DeliverClaimResponse:
        delivery = _validate(request)
        with structlog.contextvars.bound_contextvars(transaction_id=delivery.transaction_id):
            return await self._deliver(delivery)

    async def _deliver(self, delivery: NewDelivery) -> insurer_adapter_pb2.DeliverClaimResponse:
        try:
            if not await self._is_simulated(delivery.insurer_code):
                raise FailedPrecondition(
                    "insurer is not served by the simulator", reason="INSURER_NOT_SIMULATED"
                )
            new = await self._store.add_delivery(delivery)
        except DeliveryConflict:
            raise AlreadyExists(
                "transaction_id was delivered with different content", reason="DELIVERY_CONFLICT"
            ) from None
        except _DB_DOWN as exc:
            raise Unavailable("storage unavailable", reason="STORAGE_UNAVAILABLE") from exc
        metrics.DELIVERIES.labels("new" if new else "duplicate").inc()
        log.info("claim_delivered", insurer=delivery.insurer_code, duplicate=not new)
        if new:
            self._on_new()
        return insurer_adapter_pb2.DeliverClaimResponse(duplicate=not new)


def _validate(r: insurer_adapter_pb2.DeliverClaimRequest) -> NewDelivery:
    if not _TXID.match(r.transaction_id):
        raise InvalidArgument("transaction_id is missing or malformed", reason="TRANSACTION_ID_INVALID")
    if not _INSURER.match(r.insurer_code):
        raise InvalidArgument("insurer_code is malformed", reason="INSURER_CODE_INVALID")
    if not _HOSPITAL.match(r.hospital_code):
        raise InvalidArgument("hospital_code is malformed", reason="HOSPITAL_CODE_INVALID")
    if not r.claim_ref or len(r.claim_ref) > CLAIM_REF_MAX:
        raise InvalidArgument("claim_ref is missing or too long", reason="CLAIM_REF_INVALID")
    if r.billed_amount_satang < 0:
        raise InvalidArgument("billed_amount_satang is negative", reason="AMOUNT_INVALID")
    if not r.envelope:
        raise InvalidArgument("envelope is empty", reason="ENVELOPE_MISSING")
    if len(r.envelope.encode("utf-8")) > MAX_ENVELOPE_BYTES:
        raise InvalidArgument("envelope exceeds 1 MiB", reason="ENVELOPE_TOO_LARGE")
    submitted = r.submitted_at.ToDatetime(tzinfo=UTC) if r.HasField("submitted_at") else None
    return NewDelivery(
        transaction_id=r.transaction_id,
        insurer_code=r.insurer_code,
        hospital_code=r.hospital_code,
        claim_ref=r.claim_ref,
        billed_amount_satang=r.billed_amount_satang,
        envelope=r.envelope,
        envelope_sha256=sha256_hex(r.envelope),
        submitted_at=submitted,
    )
