"""The hospitals' side: HIS clients that behave like real ones. Each claim is
sealed once; the SDK retries UNAVAILABLE/RESOURCE_EXHAUSTED with the same
claim_ref and envelope, and when the SDK gives up (its own attempts and time)
the HIS resubmits the same request after a pause, until the claim is
acknowledged. Then it follows the claim until a final state: by waiting in
SubmitClaim (decision_timeout), by WatchClaim, or by polling GetClaim.

A gate (set by the chaos driver) holds submissions back so that every chaos
event happens while claims are still being submitted."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from bench.soak.wire import has_status_details
from iclaim.client.hospital import HospitalClient
from iclaim.client.signer import _error_info
from iclaim.fhir.claim import synthetic_claim
from iclaim.v1 import claim_service_pb2 as pb

S = pb.ClaimState
FINAL = frozenset(
    {S.CLAIM_STATE_APPROVED, S.CLAIM_STATE_PARTIALLY_APPROVED, S.CLAIM_STATE_DENIED,
     S.CLAIM_STATE_CANCELLED, S.CLAIM_STATE_FAILED, S.CLAIM_STATE_PAID}
)  # fmt: skip
DECIDED = frozenset({S.CLAIM_STATE_APPROVED, S.CLAIM_STATE_PARTIALLY_APPROVED, S.CLAIM_STATE_DENIED})
# The sandbox's magic policies (§8) and how often each is used.
POLICIES = (("POL", 60), ("DENY", 10), ("LIMIT", 10), ("REVIEW", 12), ("SLOW", 8))
FOLLOW = ("wait", "watch", "poll")
WAIT_S = 5.0  # decision_timeout of the "wait" claims
GIVE_UP_S = 600.0  # a HIS stops resubmitting a claim after this long (then it is reported)


@dataclass(frozen=True)
class Planned:
    n: int
    hospital: str
    insurer: str
    claim_ref: str
    policy: str
    amount: int
    follow: str


def plan(
    n: int, hospitals: Sequence[str], insurers: Sequence[str], run_id: str, rng: random.Random
) -> list[Planned]:
    kinds = [k for k, _ in POLICIES]
    weights = [w for _, w in POLICIES]
    out = []
    for i in range(n):
        amount = 10_000 + rng.randrange(2_000_000)
        kind = rng.choices(kinds, weights)[0]
        policy = f"LIMIT-{amount // 2}-{i}" if kind == "LIMIT" else f"{kind}-{i}"
        hospital, insurer = hospitals[i % len(hospitals)], rng.choice(insurers)
        out.append(
            Planned(i, hospital, insurer, f"SOAK-{run_id}-{i}", policy, amount, FOLLOW[i % len(FOLLOW)])
        )
    return out


@dataclass
class View:
    """What the HIS knows of one claim."""

    planned: Planned
    transaction_ids: set[str] = field(default_factory=set)  # every id an answer named: must be one
    claim: pb.Claim | None = None

    @property
    def state(self) -> int:
        return self.claim.state if self.claim is not None else S.CLAIM_STATE_UNSPECIFIED


def _retryable(err: grpc.aio.AioRpcError) -> bool:
    """Worth sending again as is: the SDK's retryable codes, our own deadline,
    and a stream Envoy reset because the service behind it was killed."""
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return True
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    return err.code() == grpc.StatusCode.INTERNAL and not has_status_details(err.trailing_metadata())


def _describe(method: str, err: grpc.aio.AioRpcError) -> str:
    return f"{method} {err.code().name} {_error_info(err.trailing_metadata())[0]}".rstrip()


class His:
    def __init__(
        self,
        clients: dict[str, HospitalClient],
        planned: list[Planned],
        rng: random.Random,
        on_final: Callable[[pb.Claim], None],
    ) -> None:
        self._clients = clients
        self.planned = planned
        self._rng = rng
        self._on_final = on_final
        self.views: dict[str, View] = {p.claim_ref: View(p) for p in planned}
        self.started = 0
        self.acked = 0
        self.final = 0
        self.resubmits = 0
        self.given_up: list[str] = []
        self.errors: Counter[str] = Counter()  # calls that failed for good (not retryable)
        self.notes: Counter[str] = Counter()  # what made the HIS change course, harmlessly
        self._allowed = 0
        self._gate = asyncio.Condition()
        self._followers: set[asyncio.Task[None]] = set()

    # --- the gate -------------------------------------------------------------------
    async def allow(self, upto: int) -> None:
        async with self._gate:
            self._allowed = max(self._allowed, upto)
            self._gate.notify_all()

    async def wait_started(self, n: int) -> None:
        async with self._gate:
            await self._gate.wait_for(lambda: self.started >= n)

    # --- submitting -----------------------------------------------------------------
    async def submit_all(self, concurrency: int, shown: Callable[[], None]) -> None:
        queue = iter(self.planned)

        async def worker() -> None:
            for p in queue:
                async with self._gate:
                    await self._gate.wait_for(lambda p=p: p.n < self._allowed)  # type: ignore[misc]
                    self.started += 1
                    self._gate.notify_all()  # the chaos driver waits for its point
                await self._submit(p)
                shown()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def _seal(self, client: HospitalClient, p: Planned, deadline: float) -> str | None:
        body = synthetic_claim(
            p.hospital, p.insurer, p.claim_ref, p.policy, p.amount, patient_name="Soak Patient"
        )
        while True:
            try:
                return await client.seal_claim(
                    body, insurer_code=p.insurer, claim_ref=p.claim_ref, amount_satang=p.amount
                )
            except grpc.aio.AioRpcError as err:  # the directory listing failed
                if not _retryable(err) or time.monotonic() > deadline:
                    self.errors[_describe("ListInsurers", err)] += 1
                    return None
                await asyncio.sleep(self._rng.uniform(0.5, 2.0))

    async def _submit(self, p: Planned) -> None:
        client = self._clients[p.hospital]
        deadline = time.monotonic() + GIVE_UP_S
        envelope = await self._seal(client, p, deadline)
        if envelope is None:
            self.given_up.append(p.claim_ref)
            return
        while True:
            try:
                claim = await client.submit_claim(
                    b"",
                    insurer_code=p.insurer,
                    claim_ref=p.claim_ref,
                    amount_satang=p.amount,
                    decision_timeout_s=WAIT_S if p.follow == "wait" else 0.0,
                    envelope=envelope,
                )
                break
            except grpc.aio.AioRpcError as err:
                if not _retryable(err):
                    self.errors[_describe("SubmitClaim", err)] += 1
                    self.given_up.append(p.claim_ref)
                    return
                if time.monotonic() > deadline:
                    self.given_up.append(p.claim_ref)
                    return
                # The SDK gave up on this attempt: the same request again, after a pause.
                self.resubmits += 1
                await asyncio.sleep(self._rng.uniform(0.5, 3.0))
        self.acked += 1
        view = self.views[p.claim_ref]
        self._saw(view, claim)
        if claim.state not in FINAL:
            task = asyncio.create_task(self._follow(client, view))
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)

    # --- following ------------------------------------------------------------------
    def _saw(self, view: View, claim: pb.Claim) -> None:
        view.transaction_ids.add(claim.transaction_id)
        was_final = view.state in FINAL
        if was_final and claim.state != view.state and claim.state != S.CLAIM_STATE_PAID:
            # A final state is final: only PAID may follow a decision.
            self.errors["a final state changed after the hospital saw it"] += 1
        view.claim = claim
        if claim.state in FINAL and not was_final:
            self.final += 1
            if claim.state in DECIDED:
                self._open(view.planned.hospital, claim)
            self._on_final(claim)

    def _open(self, hospital: str, claim: pb.Claim) -> None:
        """As an HIS does with a decision: open it and check it is this claim's."""
        try:
            self._clients[hospital].open_decision(claim)
        except Exception as exc:  # noqa: BLE001 (any failure to open is a finding)
            self.errors[f"decision of {claim.transaction_id} does not open: {type(exc).__name__}"] += 1

    async def _follow(self, client: HospitalClient, view: View) -> None:
        txn = next(iter(view.transaction_ids))
        if view.planned.follow == "watch":
            try:
                async for claim in client.watch_claim(txn, timeout_s=120.0):
                    self._saw(view, claim)
            except grpc.aio.AioRpcError as err:
                # A watch outlived by a slow decision is no fault of the hub: poll instead.
                counter = self.notes if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED else self.errors
                counter[_describe("WatchClaim", err)] += 1
            except TimeoutError:
                self.notes["WatchClaim without a final state within 120 s"] += 1
        delay = 0.3
        while view.state not in FINAL:
            await asyncio.sleep(delay * self._rng.uniform(0.8, 1.2))
            delay = min(5.0, delay * 1.6)
            try:
                self._saw(view, await client.get_claim(txn))
            except grpc.aio.AioRpcError as err:
                if not _retryable(err):
                    self.errors[_describe("GetClaim", err)] += 1

    @property
    def following(self) -> int:
        return len(self._followers)

    async def stop_following(self) -> None:
        for task in list(self._followers):
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)

    def acknowledged(self) -> dict[tuple[str, str], View]:
        """(hospital, claim_ref) -> view, for every claim some answer acknowledged."""
        return {(v.planned.hospital, ref): v for ref, v in self.views.items() if v.transaction_ids}

    def sample_decided(self, k: int, exclude: set[str]) -> list[pb.Claim]:
        decided = [
            v.claim
            for v in self.views.values()
            if v.claim is not None and v.claim.state in DECIDED and v.claim.transaction_id not in exclude
        ]
        return self._rng.sample(decided, min(k, len(decided)))
