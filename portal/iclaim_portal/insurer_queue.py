"""An insurer portal's work queue: a background puller takes claims
(PullClaims), keeps each in the portal's database, marks it PENDING_REVIEW at
the clearinghouse, and staff decide it later. Opening and sealing use the
SDK's insurer kit with the keys this portal holds."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from iclaim.client.insurer import InsurerClient
from iclaim.fhir.claim_response import (
    APPROVED,
    DENIED,
    INVALID_CLAIM_DOCUMENT,
    PARTIALLY_APPROVED,
    PENDING_REVIEW,
    build_claim_response,
)
from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.handler import IncomingClaim
from iclaim.insurer.opening import InvalidDocument, open_claim
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb

from iclaim_portal.claims import FormError
from iclaim_portal.formatting import parse_baht
from iclaim_portal.rpc import refusal_metadata, refusal_reason

log = logging.getLogger(__name__)
PULL_BATCH = 10
PULL_WAIT_S = 10.0
MAX_BACKOFF_S = 30.0
DENY_REASONS = (
    "POLICY_NOT_FOUND",
    "POLICY_LAPSED",
    "NOT_COVERED",
    "DUPLICATE_CLAIM",
    "INSUFFICIENT_DOCUMENTATION",
)
PARTIAL_REASONS = ("COVERAGE_LIMIT_REACHED", "NOT_COVERED", "CO_PAYMENT")
_STATE_VALUES = {
    PENDING_REVIEW: pb.CLAIM_STATE_PENDING_REVIEW,
    APPROVED: pb.CLAIM_STATE_APPROVED,
    PARTIALLY_APPROVED: pb.CLAIM_STATE_PARTIALLY_APPROVED,
    DENIED: pb.CLAIM_STATE_DENIED,
}


@dataclass(frozen=True)
class Decision:
    state: str
    approved_satang: int
    reason_code: str = ""


def decision_from_form(form: dict[str, str], billed_satang: int) -> Decision:
    """approve | partial (amount in baht, less than billed) | deny (reason code)."""
    outcome = form.get("outcome", "")
    if outcome == "approve":
        return Decision(APPROVED, billed_satang)
    if outcome == "partial":
        try:
            amount = parse_baht(form.get("approved_amount", ""))
        except ValueError as exc:
            raise FormError("approved_amount", "Enter the approved amount in baht (not negative).") from exc
        if not 0 < amount < billed_satang:
            raise FormError("approved_amount", "A partial approval is more than zero and less than billed.")
        reason = form.get("partial_reason", "")
        if reason not in PARTIAL_REASONS:
            raise FormError("partial_reason", "Choose a reason code.")
        return Decision(PARTIALLY_APPROVED, amount, reason)
    if outcome == "deny":
        reason = form.get("deny_reason", "")
        if reason not in DENY_REASONS:
            raise FormError("deny_reason", "Choose a reason code.")
        return Decision(DENIED, 0, reason)
    raise FormError("outcome", "Choose approve, partial or deny.")


class Queue:
    """The queue table (SQL only)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def keep(self, delivery: ipb.ClaimDelivery) -> bool:
        """True when newly taken (a delivery offered again after a lost lease is not)."""
        result = await self.pool.execute(
            "INSERT INTO queue (transaction_id, hospital_code, claim_ref, billed_satang, delivery)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (transaction_id) DO NOTHING",
            delivery.transaction_id,
            delivery.hospital_code,
            delivery.claim_ref,
            delivery.billed_amount_satang,
            delivery.SerializeToString(),
        )
        return bool(result.endswith(" 1"))

    async def open_items(self) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT transaction_id, hospital_code, claim_ref, billed_satang, taken_at, state FROM queue"
                " WHERE decided_at IS NULL ORDER BY taken_at"
            )
        )

    async def decided_items(self, limit: int = 50) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT transaction_id, hospital_code, claim_ref, billed_satang, approved_satang, state,"
                " reason_code, decided_at FROM queue WHERE decided_at IS NOT NULL"
                " ORDER BY decided_at DESC LIMIT $1",
                limit,
            )
        )

    async def get(self, transaction_id: str) -> tuple[asyncpg.Record, ipb.ClaimDelivery] | None:
        row = await self.pool.fetchrow("SELECT * FROM queue WHERE transaction_id = $1", transaction_id)
        if row is None:
            return None
        return row, ipb.ClaimDelivery.FromString(bytes(row["delivery"]))

    async def cancelled(self, transaction_id: str) -> None:
        """The hospital cancelled the claim: off the waiting list, undecided."""
        await self.pool.execute(
            "UPDATE queue SET state = 'CANCELLED', approved_satang = 0, reason_code = '', decided_at = now()"
            " WHERE transaction_id = $1 AND decided_at IS NULL",
            transaction_id,
        )

    async def decided(self, transaction_id: str, decision: Decision, staff_id: int | None) -> None:
        await self.pool.execute(
            "UPDATE queue SET state = $2, approved_satang = $3, reason_code = $4, decided_at = now(),"
            " decided_by = $5 WHERE transaction_id = $1",
            transaction_id,
            decision.state,
            decision.approved_satang,
            decision.reason_code,
            staff_id,
        )


def opened(creds: InsurerCredentials, delivery: ipb.ClaimDelivery) -> IncomingClaim | InvalidDocument:
    return open_claim(creds, delivery)


async def post(
    client: InsurerClient, creds: InsurerCredentials, delivery: ipb.ClaimDelivery, decision: Decision
) -> pb.Claim:
    """Seals the ClaimResponse to the hospital's current key and posts it."""
    document = build_claim_response(
        claim_ref=delivery.claim_ref,
        hospital_code=delivery.hospital_code,
        insurer_code=creds.code,
        state=decision.state,
        billed_satang=delivery.billed_amount_satang,
        approved_satang=decision.approved_satang,
        reason_code=decision.reason_code,
    )
    return await client.decide(
        delivery,
        state=_STATE_VALUES[decision.state],
        approved_amount_satang=decision.approved_satang,
        claim_response=document,
        reason_code=decision.reason_code,
    )


async def post_unless_cancelled(
    client: InsurerClient,
    creds: InsurerCredentials,
    queue: Queue,
    delivery: ipb.ClaimDelivery,
    decision: Decision,
) -> bool:
    """Posts the decision; False when the hospital had cancelled the claim, whose
    queue row is then closed. The insurer's API has no GetClaim: a claim no
    longer open answers a new decision with FAILED_PRECONDITION
    DECISION_CONFLICT and its state in the ErrorInfo metadata (§6); any other
    conflict (decided already, elsewhere) is the caller's to show."""
    try:
        claim = await post(client, creds, delivery, decision)
    except grpc.aio.AioRpcError as err:
        if (
            err.code() != grpc.StatusCode.FAILED_PRECONDITION
            or refusal_reason(err) != "DECISION_CONFLICT"
            or refusal_metadata(err).get("state") != "CLAIM_STATE_CANCELLED"
        ):
            raise
        claim = pb.Claim(transaction_id=delivery.transaction_id, state=pb.CLAIM_STATE_CANCELLED)
    if claim.state == pb.CLAIM_STATE_CANCELLED:
        await queue.cancelled(delivery.transaction_id)
        log.info("claim %s was cancelled by the hospital", delivery.transaction_id)
        return False
    return True


async def take(
    client: InsurerClient, creds: InsurerCredentials, queue: Queue, delivery: ipb.ClaimDelivery
) -> None:
    """Kept first, then marked: a crash between the two re-offers the claim after
    its lease, and keeping it again is a no-op."""
    await queue.keep(delivery)
    incoming = opened(creds, delivery)
    if isinstance(incoming, InvalidDocument):
        decision = Decision(DENIED, 0, INVALID_CLAIM_DOCUMENT)
        if await post_unless_cancelled(client, creds, queue, delivery, decision):
            await queue.decided(delivery.transaction_id, decision, None)
            log.info("claim %s denied: %s", delivery.transaction_id, incoming.problem)
        return
    await post_unless_cancelled(client, creds, queue, delivery, Decision(PENDING_REVIEW, 0))


async def pull_forever(client: InsurerClient, creds: InsurerCredentials, queue: Queue) -> None:
    backoff = 1.0
    while True:
        try:
            deliveries = await client.pull(max_claims=PULL_BATCH, wait_s=PULL_WAIT_S)
            for delivery in deliveries:
                await take(client, creds, queue, delivery)
            backoff = 1.0
        except (grpc.aio.AioRpcError, asyncpg.PostgresError, OSError) as err:
            log.warning("pull failed (%s); again in %.0f s", type(err).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)


def summary(incoming: IncomingClaim) -> dict[str, Any]:
    parsed = incoming.parsed
    return {
        "policy_number": parsed.policy_number,
        "patient_citizen_id": parsed.patient_citizen_id or "",
        "diagnoses": list(parsed.diagnoses),
        "items": [
            {
                "description": (item.get("productOrService") or {}).get("text", ""),
                "net": item.get("net", {}).get("value"),
            }
            for item in incoming.claim.get("item") or ()
        ],
        "patient_name": next(
            (
                (res.get("name") or [{}])[0].get("text", "")
                for res in incoming.claim.get("contained") or ()
                if res.get("resourceType") == "Patient"
            ),
            "",
        ),
    }
