"""Thin gRPC servicers: ClaimService, InsurerService (public) and the internal
DecisionIntake / ClaimSettlement services. Rules live in domain.py."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from iclaim_hub.common.access_log import TRANSACTION_HEADER
from iclaim.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from iclaim_hub.common.server import Caller, caller_of
from iclaim.crypto.envelope import sha256_hex
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from iclaim_hub.registry.cache import DirectoryCache
from iclaim_hub.registry.model import DEFAULT_KEY_GRACE_S, Principal
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import claim_service_pb2_grpc, insurer_service_pb2, insurer_service_pb2_grpc
from services.claim_router import domain
from services.claim_router.delivery import PushDeliverer
from services.claim_router.domain import State
from services.claim_router.events import state_change_events
from services.claim_router.metrics import CLAIM_OUTCOMES, DECISION_LATENCY
from services.claim_router.store import ClaimRecord, ClaimStore, Event
from services.claim_router.watch import ChangeHub

Ctx = grpc.aio.ServicerContext[Any, Any]
DEFAULT_PULL_LEASE_S = 60.0  # §6: an undecided pulled claim is offered again after this
WATCH_RECHECK_S = 15.0
def _ts(when: datetime | None) -> Timestamp | None:
    if when is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def claim_to_proto(rec: ClaimRecord) -> pb.Claim:
    return pb.Claim(
        transaction_id=rec.transaction_id,
        claim_ref=rec.claim_ref,
        hospital_code=rec.hospital_code,
        insurer_code=rec.insurer_code,
        state=int(rec.state),  # type: ignore[arg-type]
        billed_amount_satang=rec.billed_amount_satang,
        approved_amount_satang=rec.approved_amount_satang,
        decision_envelope=rec.decision_envelope,
        status_reason=rec.status_reason,
        envelope_sha256=rec.envelope_sha256,
        submitted_at=_ts(rec.submitted_at),
        decided_at=_ts(rec.decided_at),
        updated_at=_ts(rec.updated_at),
    )


def _keys(p: Principal, grace_s: float) -> list[pb.EncryptionKey]:
    return [
        pb.EncryptionKey(kid=k.kid, jwk=json.dumps(k.public_jwk, sort_keys=True))
        for k in p.accepted_keys(grace_s)
    ]


def _require(caller: Caller, role: str) -> Caller:
    if caller.role != role:
        raise PermissionDenied(f"this method is for {role}s", reason="WRONG_ROLE")
    return caller


class ClaimRouter:
    """The use cases, shared by the public and internal servicers."""

    def __init__(
        self,
        store: ClaimStore,
        directory: DirectoryCache,
        deliverer: PushDeliverer | None,
        hub: ChangeHub,
        *,
        key_grace_s: float = DEFAULT_KEY_GRACE_S,
        pull_lease_s: float = DEFAULT_PULL_LEASE_S,
    ) -> None:
        self.store = store
        self.directory = directory
        self.deliverer = deliverer
        self.hub = hub
        self.key_grace_s = key_grace_s
        self.pull_lease_s = pull_lease_s

    async def owned_claim(self, caller: Caller, transaction_id: str) -> ClaimRecord:
        domain.check_transaction_id(transaction_id)
        rec = await self.store.get(transaction_id)
        owner = None if rec is None else (
            rec.hospital_code if caller.role == "hospital" else rec.insurer_code
        )
        if rec is None or owner != caller.code:
            # Another party's claim is indistinguishable from a missing one.
            raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
        return rec

    async def wait_for(self, transaction_id: str, timeout_s: float) -> ClaimRecord | None:
        """Waits until the claim is decided (or terminal) or the timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        event = self.hub.register(transaction_id)
        try:
            while True:
                rec = await self.store.get(transaction_id)
                if rec is None or rec.state in domain.TERMINAL_STATES:
                    return rec
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return rec
                try:
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    pass
                event.clear()
        finally:
            self.hub.unregister(transaction_id, event)

    async def decide(self, d: domain.DecisionInput) -> ClaimRecord:
        """PostDecision / RecordDecision: decided at most once; same content is a no-op."""
        domain.check_transaction_id(d.transaction_id)
        rec = await self.store.get(d.transaction_id)
        if rec is None or rec.insurer_code != d.insurer_code:
            raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
        domain.validate_decision_shape(d, rec.billed_amount_satang)
        if d.decision_envelope:
            hospital = await self.directory.get(rec.hospital_code)
            if hospital is None:
                raise FailedPrecondition("hospital unknown", reason="HOSPITAL_NOT_FOUND")
            header = domain.read_header(d.decision_envelope)
            domain.check_envelope_routing(
                header,
                sender=d.insurer_code,
                recipient=hospital,
                claim_ref=rec.claim_ref,
                amount_satang=d.approved_amount_satang,
                key_grace_s=self.key_grace_s,
            )
        conflict: list[str] = []

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            if domain.decision_matches(
                cur.state, cur.approved_amount_satang, cur.decision_envelope, cur.status_reason, d
            ):
                return None, []
            if cur.state not in domain.OPEN_STATES:
                conflict.append(cur.state.name)
                return None, []
            now = datetime.now(UTC)
            new = cur.with_changes(
                state=d.state,
                approved_amount_satang=d.approved_amount_satang,
                decision_envelope=d.decision_envelope,
                status_reason=d.reason_code,
                decided_at=now if d.state in domain.DECIDED_STATES else None,
                updated_at=now,
            )
            return new, state_change_events(
                new, actor=d.insurer_code, route="/iclaim.v1.InsurerService/PostDecision"
            )

        stored = await self.store.transition(d.transaction_id, mutate)
        assert stored is not None
        if conflict:
            raise FailedPrecondition(
                f"claim is already {conflict[0]}; a different decision cannot replace it",
                reason="DECISION_CONFLICT",
            )
        if stored.state in domain.DECIDED_STATES and stored.decided_at is not None:
            CLAIM_OUTCOMES.labels(stored.state.name).inc()
            DECISION_LATENCY.observe((stored.decided_at - stored.submitted_at).total_seconds())
        return stored


class ClaimServicer(claim_service_pb2_grpc.ClaimServiceServicer):
    def __init__(self, router: ClaimRouter) -> None:
        self.r = router

    async def ListInsurers(self, request: pb.ListInsurersRequest, context: Ctx) -> pb.ListInsurersResponse:
        _require(caller_of(context), "hospital")
        size = domain.page_size_of(request.page_size)
        token = domain.decode_page_token(request.page_token, ("after",))
        after = token["after"] if token else ""
        insurers = [p for p in await self.r.directory.insurers() if p.code > after]
        page, more = insurers[:size], len(insurers) > size
        return pb.ListInsurersResponse(
            insurers=[
                pb.Insurer(
                    code=p.code,
                    display_name=p.display_name,
                    line=p.line or 0,  # type: ignore[arg-type]
                    available=p.available and not p.suspended,
                    keys=_keys(p, self.r.key_grace_s),
                )
                for p in page
            ],
            next_page_token=domain.encode_page_token({"after": page[-1].code}) if more else "",
        )

    async def SubmitClaim(self, request: pb.SubmitClaimRequest, context: Ctx) -> pb.SubmitClaimResponse:
        caller = _require(caller_of(context), "hospital")
        timeout_s = domain.duration_s(
            request.decision_timeout.seconds,
            request.decision_timeout.nanos,
            field="decision_timeout",
            reason="DECISION_TIMEOUT_INVALID",
            max_s=domain.MAX_DECISION_TIMEOUT_S,
        )
        submit = domain.SubmitInput(
            hospital_code=caller.code,
            claim_ref=request.claim_ref,
            insurer_code=request.insurer_code,
            billed_amount_satang=request.billed_amount_satang,
            envelope=request.envelope,
            decision_timeout_s=timeout_s,
        )
        domain.validate_submit(submit)
        header = domain.read_header(request.envelope)
        insurer = domain.check_insurer_routable(
            await self.r.directory.get(request.insurer_code), request.insurer_code
        )
        domain.check_envelope_routing(
            header,
            sender=caller.code,
            recipient=insurer,
            claim_ref=request.claim_ref,
            amount_satang=request.billed_amount_satang,
            key_grace_s=self.r.key_grace_s,
        )
        envelope_sha = sha256_hex(request.envelope)
        now = datetime.now(UTC)
        candidate = ClaimRecord(
            transaction_id=domain.new_transaction_id(),
            hospital_code=caller.code,
            insurer_code=insurer.code,
            claim_ref=request.claim_ref,
            state=State.RECEIVED,
            billed_amount_satang=request.billed_amount_satang,
            approved_amount_satang=0,
            envelope=request.envelope,
            envelope_sha256=envelope_sha,
            decision_envelope="",
            status_reason="",
            delivery_mode="pull" if insurer.delivery_mode == "pull" else "simulated",
            submitted_at=now,
            decided_at=None,
            updated_at=now,
        )
        stored, created = await self.r.store.insert(
            candidate,
            state_change_events(
                candidate, actor=caller.code, route="/iclaim.v1.ClaimService/SubmitClaim"
            ),
        )
        if not created and stored.envelope_sha256 != envelope_sha:
            raise domain.AlreadyExistsClaimRef(stored.claim_ref)
        structlog.contextvars.bind_contextvars(transaction_id=stored.transaction_id)
        context.set_trailing_metadata(((TRANSACTION_HEADER, stored.transaction_id),))
        if created:
            CLAIM_OUTCOMES.labels("RECEIVED").inc()
            if stored.delivery_mode == "simulated" and self.r.deliverer is not None:
                self.r.deliverer.kick(stored.transaction_id)
        if timeout_s > 0:
            stored = await self.r.wait_for(stored.transaction_id, timeout_s) or stored
        return pb.SubmitClaimResponse(claim=claim_to_proto(stored))

    async def GetClaim(self, request: pb.GetClaimRequest, context: Ctx) -> pb.Claim:
        caller = _require(caller_of(context), "hospital")
        return claim_to_proto(await self.r.owned_claim(caller, request.transaction_id))

    async def WatchClaim(self, request: pb.WatchClaimRequest, context: Ctx) -> AsyncIterator[pb.Claim]:
        caller = _require(caller_of(context), "hospital")
        rec = await self.r.owned_claim(caller, request.transaction_id)
        event = self.r.hub.register(rec.transaction_id)
        try:
            last: tuple[State, datetime] | None = None
            while True:
                current = await self.r.store.get(rec.transaction_id)
                assert current is not None
                if last != (current.state, current.updated_at):
                    if last is None or last[0] != current.state:
                        yield claim_to_proto(current)
                    last = (current.state, current.updated_at)
                if current.state in domain.TERMINAL_STATES:
                    return
                try:
                    async with asyncio.timeout(WATCH_RECHECK_S):
                        await event.wait()
                except TimeoutError:
                    pass
                event.clear()
        finally:
            self.r.hub.unregister(rec.transaction_id, event)

    async def ListClaims(self, request: pb.ListClaimsRequest, context: Ctx) -> pb.ListClaimsResponse:
        caller = _require(caller_of(context), "hospital")
        size = domain.page_size_of(request.page_size)
        token = domain.decode_page_token(request.page_token, ("at", "tid"))
        after = None
        if token is not None:
            try:
                after = (datetime.fromisoformat(token["at"]), token["tid"])
            except ValueError:
                raise InvalidArgument(
                    "page_token is not valid", reason="PAGE_TOKEN_INVALID"
                ) from None
        state = domain.state_filter_of(request.state) if request.HasField("state") else None
        insurer = (
            domain.check_insurer_code(request.insurer_code)
            if request.HasField("insurer_code")
            else None
        )
        rows = await self.r.store.list_for_hospital(
            caller.code, state=state, insurer_code=insurer, after=after, limit=size + 1
        )
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            last = page[-1]
            next_token = domain.encode_page_token(
                {"at": last.submitted_at.isoformat(), "tid": last.transaction_id}
            )
        return pb.ListClaimsResponse(
            claims=[claim_to_proto(r) for r in page], next_page_token=next_token
        )

    async def CancelClaim(self, request: pb.CancelClaimRequest, context: Ctx) -> pb.Claim:
        caller = _require(caller_of(context), "hospital")
        domain.check_cancel_reason(request.reason)
        rec = await self.r.owned_claim(caller, request.transaction_id)
        rejected: list[State] = []

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            if cur.state == State.CANCELLED:
                return None, []
            if cur.state not in domain.OPEN_STATES:
                rejected.append(cur.state)
                return None, []
            now = datetime.now(UTC)
            new = cur.with_changes(
                state=State.CANCELLED, status_reason="CANCELLED_BY_HOSPITAL", updated_at=now
            )
            return new, state_change_events(
                new, actor=caller.code, route="/iclaim.v1.ClaimService/CancelClaim"
            )

        stored = await self.r.store.transition(rec.transaction_id, mutate)
        if rejected:
            domain.check_cancellable(rejected[0])
        assert stored is not None
        return claim_to_proto(stored)


class InsurerServicer(insurer_service_pb2_grpc.InsurerServiceServicer):
    def __init__(self, router: ClaimRouter) -> None:
        self.r = router

    async def PullClaims(
        self, request: insurer_service_pb2.PullClaimsRequest, context: Ctx
    ) -> insurer_service_pb2.PullClaimsResponse:
        caller = _require(caller_of(context), "insurer")
        if not 1 <= request.max_claims <= domain.MAX_PULL_CLAIMS:
            raise InvalidArgument("max_claims must be 1-100", reason="MAX_CLAIMS_INVALID")
        wait_s = domain.duration_s(
            request.wait.seconds,
            request.wait.nanos,
            field="wait",
            reason="WAIT_INVALID",
            max_s=domain.MAX_PULL_WAIT_S,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        key = f"pull:{caller.code}"
        event = self.r.hub.register(key)
        try:
            while True:
                leased = await self.r.store.lease_pull(
                    caller.code,
                    request.max_claims,
                    self.r.pull_lease_s,
                    lambda rec: state_change_events(
                        rec, actor=caller.code, route="/iclaim.v1.InsurerService/PullClaims"
                    ),
                )
                remaining = deadline - loop.time()
                if leased or remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(min(remaining, 1.0)):
                        await event.wait()
                except TimeoutError:
                    pass
                event.clear()
        finally:
            self.r.hub.unregister(key, event)
        return insurer_service_pb2.PullClaimsResponse(
            deliveries=[
                insurer_service_pb2.ClaimDelivery(
                    transaction_id=r.transaction_id,
                    hospital_code=r.hospital_code,
                    claim_ref=r.claim_ref,
                    billed_amount_satang=r.billed_amount_satang,
                    envelope=r.envelope,
                    submitted_at=_ts(r.submitted_at),
                )
                for r in leased
            ]
        )

    async def GetHospital(
        self, request: insurer_service_pb2.GetHospitalRequest, context: Ctx
    ) -> insurer_service_pb2.Hospital:
        _require(caller_of(context), "insurer")
        domain.check_hospital_code(request.hospital_code)
        hospital = await self.r.directory.get(request.hospital_code)
        if hospital is None or hospital.role != "hospital":
            raise NotFound("hospital not found", reason="HOSPITAL_NOT_FOUND")
        return insurer_service_pb2.Hospital(
            code=hospital.code,
            display_name=hospital.display_name,
            keys=_keys(hospital, self.r.key_grace_s),
        )

    async def PostDecision(
        self, request: insurer_service_pb2.PostDecisionRequest, context: Ctx
    ) -> pb.Claim:
        caller = _require(caller_of(context), "insurer")
        domain.check_transaction_id(request.transaction_id)
        stored = await self.r.decide(
            domain.DecisionInput(
                transaction_id=request.transaction_id,
                insurer_code=caller.code,
                # An unknown or non-postable state is refused before any lookup.
                state=domain.postable_state_of(request.state),
                approved_amount_satang=request.approved_amount_satang,
                decision_envelope=request.decision_envelope,
                reason_code=request.reason_code,
            )
        )
        return claim_to_proto(stored)


def _state(value: int) -> State:
    try:
        return State(value)
    except ValueError:
        return State.UNSPECIFIED


class DecisionIntakeServicer(decision_intake_pb2_grpc.DecisionIntakeServiceServicer):
    """Decisions from the insurer adapter (simulated and push insurers)."""

    def __init__(self, router: ClaimRouter) -> None:
        self.r = router

    async def RecordDecision(
        self, request: decision_intake_pb2.RecordDecisionRequest, context: Ctx
    ) -> decision_intake_pb2.RecordDecisionResponse:
        stored = await self.r.decide(
            domain.DecisionInput(
                transaction_id=request.transaction_id,
                insurer_code=request.insurer_code,
                state=_state(request.state),
                approved_amount_satang=request.approved_amount_satang,
                decision_envelope=request.decision_envelope,
                reason_code=request.reason_code,
            )
        )
        return decision_intake_pb2.RecordDecisionResponse(claim=claim_to_proto(stored))


class ClaimSettlementServicer(decision_intake_pb2_grpc.ClaimSettlementServiceServicer):
    """Billing tells us when a claim has nothing left due."""

    def __init__(self, router: ClaimRouter) -> None:
        self.r = router

    async def MarkClaimPaid(
        self, request: decision_intake_pb2.MarkClaimPaidRequest, context: Ctx
    ) -> decision_intake_pb2.MarkClaimPaidResponse:
        domain.check_transaction_id(request.transaction_id)
        rejected: list[State] = []

        def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
            if cur.state == State.PAID:
                return None, []
            if cur.state not in domain.BILLABLE_STATES:
                rejected.append(cur.state)
                return None, []
            new = cur.with_changes(state=State.PAID, updated_at=datetime.now(UTC))
            return new, state_change_events(
                new, actor="ICLAIM", route="/iclaim_hub.internal.v1.ClaimSettlementService/MarkClaimPaid"
            )

        stored = await self.r.store.transition(request.transaction_id, mutate)
        if stored is None:
            raise NotFound("claim not found", reason="CLAIM_NOT_FOUND")
        if rejected:
            raise FailedPrecondition(
                f"claim is {rejected[0].name}, not approved", reason="CLAIM_NOT_APPROVED"
            )
        return decision_intake_pb2.MarkClaimPaidResponse(claim=claim_to_proto(stored))
