"""Taking a delivery: verify the push (§10.1) over the raw bytes, then parse,
check, store durably, and hand it to the worker (or, answering in the push,
§10.6, let the worker decide it first). Shared by the gRPC and the
webhook receivers; the pull loop skips verification (the gateway channel is
authenticated) but stores the same way.

Errors are `iclaim.errors` with stable reasons; each receiver maps them to
its transport (gRPC status / HTTP status).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from iclaim.crypto.envelope import MAX_ENVELOPE_BYTES
from iclaim.crypto.signing import CLIENT_RE
from iclaim.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from iclaim.insurer.inbox import Inbox, PutResult, StagedPost
from iclaim.insurer.verify import NONCE_CACHE_FULL, PushRejected, PushVerifier, auth_headers
from iclaim.v1 import insurer_service_pb2 as ipb

DELIVERY_INVALID = "DELIVERY_INVALID"
# §10.6: a webhook push that says the hub takes a decision in the answer
# (a gRPC push says so in ReceiveClaimRequest.accepts_decision).
ACCEPTS_DECISION_HEADER = "x-iclaim-accepts-decision"
# Lenient on purpose: the hub's id format is its own business; this only keeps
# ids short and printable (they are logged and used as keys).
TRANSACTION_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_CLAIM_REF = 256


@dataclass(frozen=True)
class Taken:
    insurer_code: str
    transaction_id: str
    result: PutResult


def check_delivery(d: ipb.ClaimDelivery) -> None:
    """A delivery the worker can act on; else INVALID_ARGUMENT DELIVERY_INVALID."""
    problems = (
        not TRANSACTION_ID_RE.fullmatch(d.transaction_id),
        not CLIENT_RE.fullmatch(d.hospital_code),
        not 0 < len(d.claim_ref) <= MAX_CLAIM_REF,
        not 0 < len(d.envelope) <= MAX_ENVELOPE_BYTES,
        d.billed_amount_satang < 0,
    )
    if any(problems):
        raise InvalidArgument("delivery is incomplete or malformed", reason=DELIVERY_INVALID)


def answer_message(transaction_id: str, post: StagedPost) -> ipb.PostDecisionRequest:
    """A decision to answer a push with (§10.6): PostDecision's fields."""
    return ipb.PostDecisionRequest(
        transaction_id=transaction_id,
        state=post.state,  # type: ignore[arg-type]  # a ClaimState value
        approved_amount_satang=post.approved_satang,
        decision_envelope=post.envelope,
        reason_code=post.reason_code,
    )


class Intake:
    def __init__(
        self,
        verifier: PushVerifier,
        inbox: Callable[[], Inbox],
        on_new: Callable[[str, str], None],
        answer: Callable[[str, ipb.ClaimDelivery], Awaitable[tuple[PutResult, StagedPost | None]]]
        | None = None,
    ) -> None:
        self._verifier = verifier
        self._inbox = inbox
        self._on_new = on_new
        self._answer = answer

    def verify(
        self,
        method_lines: Sequence[str],
        body: bytes,
        headers: Iterable[tuple[str, str | bytes]],
        insurer_code: str | None = None,
    ) -> str:
        """The insurer the push is for. `headers`: every (name, value) pair as
        received (HTTP headers or gRPC metadata), duplicates included."""
        try:
            found = auth_headers(headers)
            return self._verifier.verify_any(method_lines, body, found, insurer_code=insurer_code)
        except PushRejected as exc:
            meta = {"server_time": str(exc.server_time)}
            if exc.reason == NONCE_CACHE_FULL:
                raise ResourceExhausted("too many recent pushes", reason=exc.reason, metadata=meta) from None
            raise Unauthenticated("push not authenticated", reason=exc.reason, metadata=meta) from None

    async def store(self, insurer_code: str, delivery: ipb.ClaimDelivery) -> Taken:
        return await store(self._inbox(), self._on_new, insurer_code, delivery)

    async def take(
        self, insurer_code: str, delivery: ipb.ClaimDelivery, *, accepts_decision: bool
    ) -> tuple[PutResult, ipb.PostDecisionRequest | None]:
        """A push's delivery stored durably; with answering in the push on
        (§10.6) and a push that says the hub takes a decision in the answer,
        also the decision to answer with when the handler gave a final one at
        once (stored decided in the same commit)."""
        if self._answer is None or not accepts_decision:
            return (await self.store(insurer_code, delivery)).result, None
        check_delivery(delivery)
        result, post = await self._answer(insurer_code, delivery)
        return result, None if post is None else answer_message(delivery.transaction_id, post)


async def store(
    inbox: Inbox, on_new: Callable[[str, str], None], insurer_code: str, delivery: ipb.ClaimDelivery
) -> Taken:
    """Checks, stores durably, then tells the worker (only about new ones)."""
    check_delivery(delivery)
    (taken,) = await store_many(inbox, on_new, insurer_code, [delivery])
    return taken


async def store_many(
    inbox: Inbox,
    on_new: Callable[[str, str], None],
    insurer_code: str,
    deliveries: Sequence[ipb.ClaimDelivery],
) -> list[Taken]:
    """`store` for a pulled batch, in one inbox transaction. The caller has
    checked each delivery. Those stored are told to the worker even when the
    inbox filled up part-way (then RESOURCE_EXHAUSTED INBOX_FULL: the rest are
    offered again after their lease)."""
    results = await inbox.put_many(insurer_code, deliveries)
    taken = [Taken(insurer_code, d.transaction_id, r) for d, r in zip(deliveries, results, strict=True) if r]
    for t in taken:
        if t.result in (PutResult.NEW, PutResult.REOPENED):
            on_new(insurer_code, t.transaction_id)
    if len(taken) < len(deliveries):
        raise ResourceExhausted("inbox is full", reason="INBOX_FULL")
    return taken
