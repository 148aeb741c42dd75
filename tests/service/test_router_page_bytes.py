"""A page of claims stays within what a client accepts (8 MiB): PullClaims and
ListClaims stop early when the envelopes they carry would pass the page's byte
budget, and what is left follows (the next pull, the next page token)."""

from __future__ import annotations

import os

from iclaim.crypto.envelope import seal
from iclaim.limits import MAX_RESPONSE_BYTES
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2
from services.claim_router.domain import PAGE_ENVELOPE_BUDGET_BYTES, within_byte_budget
from tests.support.router import PULL, Router, md, running_router

H1 = "10670"
CLAIMS = 10
PAYLOAD = 700_000  # sealed: about 0.93 MB, under the 1 MiB envelope limit


async def submit_large(router: Router, ref: str) -> pb.Claim:
    public = {k: v for k, v in router.keys[PULL].items() if k != "d"}
    envelope = seal(os.urandom(PAYLOAD), public, sender=H1, recipient=PULL, claim_ref=ref, amount_satang=100)
    resp = await router.claims.SubmitClaim(
        pb.SubmitClaimRequest(claim_ref=ref, insurer_code=PULL, billed_amount_satang=100, envelope=envelope),
        metadata=md(H1),
        timeout=20,
    )
    return resp.claim


async def test_large_envelopes_are_paged_within_the_clients_limit(database_url: str) -> None:
    async with running_router(database_url) as router:
        submitted = {(await submit_large(router, f"BIG-{n}")).transaction_id for n in range(CLAIMS)}
        # Ten such envelopes in one answer would pass the clients' 8 MiB.
        assert CLAIMS * PAYLOAD * 4 // 3 > MAX_RESPONSE_BYTES

        first = await router.insurer.PullClaims(
            insurer_service_pb2.PullClaimsRequest(max_claims=CLAIMS), metadata=md(PULL), timeout=20
        )
        assert 0 < len(first.deliveries) < CLAIMS
        assert first.ByteSize() <= PAGE_ENVELOPE_BUDGET_BYTES + 64 * 1024
        second = await router.insurer.PullClaims(
            insurer_service_pb2.PullClaimsRequest(max_claims=CLAIMS), metadata=md(PULL), timeout=20
        )
        pulled = [d.transaction_id for d in (*first.deliveries, *second.deliveries)]
        assert sorted(pulled) == sorted(submitted)  # each once, the rest on the next pull

        # ListClaims: large decision envelopes end a page early; the token brings the rest.
        public_h1 = {k: v for k, v in router.keys[H1].items() if k != "d"}
        for d in (*first.deliveries, *second.deliveries):
            decision = seal(
                os.urandom(PAYLOAD),
                public_h1,
                sender=PULL,
                recipient=H1,
                claim_ref=d.claim_ref,
                amount_satang=100,
            )
            await router.insurer.PostDecision(
                insurer_service_pb2.PostDecisionRequest(
                    transaction_id=d.transaction_id,
                    state=pb.CLAIM_STATE_APPROVED,
                    approved_amount_satang=100,
                    decision_envelope=decision,
                ),
                metadata=md(PULL),
                timeout=20,
            )
        listed: list[str] = []
        pages = 0
        token = ""
        while True:
            page = await router.claims.ListClaims(
                pb.ListClaimsRequest(page_size=50, page_token=token), metadata=md(H1), timeout=20
            )
            pages += 1
            assert page.ByteSize() <= PAGE_ENVELOPE_BUDGET_BYTES + 64 * 1024
            listed += [c.transaction_id for c in page.claims]
            token = page.next_page_token
            if not token:
                break
        assert pages >= 2 and sorted(listed) == sorted(submitted)


def test_the_budget_always_lets_one_item_through() -> None:
    assert within_byte_budget([], 10) == 0
    assert within_byte_budget([50], 10) == 1  # larger than the budget alone: still served
    assert within_byte_budget([4, 4, 4], 10) == 2
    assert within_byte_budget([4, 4, 2], 10) == 3
