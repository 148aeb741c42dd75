"""Carrying a pull insurer's decisions on its next PullClaims (docs/protocol.md
§6.1) instead of one PostDecision each.

The carrier stands in for the insurer's gateway in the worker while the pull
loop runs. After the loop stores a batch it says how many decisions to expect;
before its next pull it waits a moment (CARRY_WAIT_S) for them, and those that
came ride on that pull. Any other post (during a long poll, after the moment,
when nothing is expected, or one that does not fit) goes by PostDecision at
once: a decision never waits on a long poll.

Each post still awaits its own outcome, and a refusal is raised as the
`grpc.aio.AioRpcError` PostDecision would have raised, so the worker treats a
carried decision exactly like a posted one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import grpc

from iclaim.errors import Code, build_status
from iclaim.insurer.worker import InsurerGateway
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb

# How long the pull loop holds its next pull for the decisions of the batch it
# just stored: long enough for a quick handler, short against a long poll.
CARRY_WAIT_S = 0.05
MAX_CARRIED = 100  # §6.1: more is refused whole (TOO_MANY_DECISIONS)
# The carried decisions' share of a request: 3/4 of the 1 MiB + 64 KiB limit
# (iclaim.limits, §4), leaving ample room for the pull's own fields and
# framing. A decision that does not fit is posted.
CARRY_BUDGET_BYTES = 768 * 1024
# A repeated field's tag and length prefix (a length < 2 MiB takes 3 bytes).
_FIELD_OVERHEAD = 4

_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}
DECISION_CONFLICT = "DECISION_CONFLICT"


@runtime_checkable
class PullCarrying(Protocol):
    """A gateway that can carry decisions on a pull (`InsurerClient` can)."""

    async def pull_carrying(
        self, max_claims: int, wait_s: float, decisions: Sequence[ipb.PostDecisionRequest]
    ) -> tuple[list[ipb.ClaimDelivery], list[ipb.DecisionResult]]: ...


# What became of a carried decision: recorded, to be posted by PostDecision
# (no result, or not known sent), or the error its post raises.
_Outcome = Literal["recorded", "post"] | grpc.aio.AioRpcError


@dataclass
class _Carried:
    request: ipb.PostDecisionRequest
    size: int
    outcome: asyncio.Future[_Outcome]


def refusal_error(result: ipb.DecisionResult) -> grpc.aio.AioRpcError:
    """The error PostDecision would have raised for this refusal: its code and
    a grpc-status-details-bin trailer with its ErrorInfo reason (and `state`
    with DECISION_CONFLICT, §6)."""
    status_code = _STATUS_BY_NUMBER.get(result.code, grpc.StatusCode.UNKNOWN)
    metadata: dict[str, str] = {}
    if result.reason == DECISION_CONFLICT and result.state:
        with contextlib.suppress(ValueError):  # a state this SDK does not know: left out
            metadata["state"] = pb.ClaimState.Name(result.state)
    message = f"decision refused on PullClaims ({result.reason or status_code.name})"
    status = build_status(Code(status_code.value[0]), message, result.reason, metadata)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(status_code, grpc.aio.Metadata(), trailing, details=message)


def _copy(exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """One error per waiting post: an exception raised in several tasks would
    collect all their tracebacks."""
    return grpc.aio.AioRpcError(
        exc.code(),
        exc.initial_metadata(),
        exc.trailing_metadata(),
        details=exc.details(),
        debug_error_string=exc.debug_error_string(),
    )


class DecisionCarrier:
    """The worker's gateway for one pull insurer: posts ride the next pull when
    one is about to be made, else go by PostDecision. `pull` is the loop's."""

    def __init__(
        self,
        gateway: InsurerGateway,
        *,
        wait_s: float = CARRY_WAIT_S,
        max_carried: int = MAX_CARRIED,
        budget_bytes: int = CARRY_BUDGET_BYTES,
    ) -> None:
        self.gateway = gateway
        # A gateway without pull_carrying (a stand-in, an older one) carries nothing.
        self._carrying = gateway if isinstance(gateway, PullCarrying) else None
        self.wait_s = wait_s
        self.max_carried = min(max_carried, MAX_CARRIED)
        self.budget_bytes = budget_bytes
        self._collecting = False  # a pull is about to be made: posts join it
        self._expected = 0  # decisions still awaited for it
        self._pending: list[_Carried] = []
        self._bytes = 0
        self._ready = asyncio.Event()  # all expected came, or no more fit

    # --- the pull loop's side ----------------------------------------------------

    def expect(self, decisions: int) -> None:
        """A batch was stored: hold its `decisions` for the next pull."""
        if self._carrying is None or decisions <= 0:
            return
        self._collecting = True
        self._expected = decisions
        self._ready.clear()

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        """The next pull, carrying what came for the last batch. A failed call
        raises; each carried post raises that call's error (a gRPC one) or is
        posted by PostDecision (anything else, e.g. cancelled on stop)."""
        carried = await self._take()
        carrying = self._carrying
        if not carried or carrying is None:
            return await self.gateway.pull(max_claims=max_claims, wait_s=wait_s)
        try:
            deliveries, results = await carrying.pull_carrying(
                max_claims, wait_s, [c.request for c in carried]
            )
        except grpc.aio.AioRpcError as exc:
            for c in carried:
                _settle(c, _copy(exc))
            raise
        except BaseException:
            for c in carried:
                _settle(c, "post")
            raise
        for i, c in enumerate(carried):
            result = results[i] if i < len(results) else None
            _settle(c, _outcome_of(c.request, result))
        return deliveries

    def close(self) -> None:
        """The loop stops: what is held goes by PostDecision, and so does every later post."""
        self._collecting = False
        self._expected = 0
        held, self._pending, self._bytes = self._pending, [], 0
        for c in held:
            _settle(c, "post")

    async def _take(self) -> list[_Carried]:
        """What came for the next pull, after waiting at most `wait_s` for the rest."""
        if not self._collecting:
            return []
        try:
            if not self._ready.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.wait_s):
                        await self._ready.wait()
        except BaseException:
            self.close()
            raise
        self._collecting = False
        self._expected = 0
        taken, self._pending, self._bytes = self._pending, [], 0
        return [c for c in taken if not c.outcome.done()]  # a cancelled post is not carried

    # --- the worker's side (InsurerGateway) --------------------------------------

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]:
        return await self.gateway.hospital_key(hospital_code)

    async def post_decision(
        self,
        transaction_id: str,
        *,
        state: int,
        approved_amount_satang: int,
        decision_envelope: str,
        reason_code: str = "",
    ) -> Any:
        """Carried on the next pull if one is about to be made, else posted."""
        request = ipb.PostDecisionRequest(
            transaction_id=transaction_id,
            state=state,  # type: ignore[arg-type]
            approved_amount_satang=approved_amount_satang,
            decision_envelope=decision_envelope,
            reason_code=reason_code,
        )
        carried = self._hold(request)
        outcome: _Outcome = "post" if carried is None else await carried.outcome
        if isinstance(outcome, grpc.aio.AioRpcError):
            raise outcome
        if outcome == "recorded":
            return None
        return await self.gateway.post_decision(
            transaction_id,
            state=state,
            approved_amount_satang=approved_amount_satang,
            decision_envelope=decision_envelope,
            reason_code=reason_code,
        )

    def _hold(self, request: ipb.PostDecisionRequest) -> _Carried | None:
        """Holds `request` for the next pull; None when it is to be posted now."""
        if not self._collecting:
            return None
        self._expected -= 1  # came, whether it fits or not
        size = request.ByteSize() + _FIELD_OVERHEAD
        fits = (
            len(self._pending) < self.max_carried
            and self._bytes + size <= self.budget_bytes
            # Two decisions on one claim in one call are refused (TRANSACTION_REPEATED).
            and all(c.request.transaction_id != request.transaction_id for c in self._pending)
        )
        carried = None
        if fits:
            carried = _Carried(request, size, asyncio.get_running_loop().create_future())
            self._pending.append(carried)
            self._bytes += size
        if self._expected <= 0 or len(self._pending) >= self.max_carried:
            self._ready.set()
        return carried


def _outcome_of(request: ipb.PostDecisionRequest, result: ipb.DecisionResult | None) -> _Outcome:
    if result is None or result.transaction_id != request.transaction_id:
        # No result (a clearinghouse of an earlier release ignored it): post it;
        # were it recorded after all, the same decision again is a no-op.
        return "post"
    if result.code == 0:
        return "recorded"
    return refusal_error(result)


def _settle(carried: _Carried, outcome: _Outcome) -> None:
    if not carried.outcome.done():  # its post may have been cancelled meanwhile
        carried.outcome.set_result(outcome)
