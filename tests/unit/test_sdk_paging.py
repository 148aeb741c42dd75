"""The SDK's listings follow next_page_token to the end, and stop with an error
when a server hands back a token it already gave (else they would fetch the
same pages, and grow the list, for ever). Stand-in stubs; no server."""

from __future__ import annotations

from typing import Any

import pytest

from iclaim.client.billing import BillingClient
from iclaim.client.channel import RepeatedPageToken
from iclaim.client.credentials import Credentials
from iclaim.client.hospital import HospitalClient
from iclaim.v1 import billing_service_pb2 as bpb
from iclaim.v1 import claim_service_pb2 as pb

CREDS = Credentials("127.0.0.1:9", None, "10670", "k1", b"\x01" * 32, {})


class Pages:
    """Answers each call with the next (items, next token) in `pages`."""

    def __init__(self, make: Any, field: str, pages: list[tuple[int, str]]) -> None:
        self._make, self._field, self._pages = make, field, list(pages)
        self.tokens: list[str] = []

    async def __call__(self, request: Any, timeout: float) -> Any:
        self.tokens.append(request.page_token)
        n, token = self._pages.pop(0)
        return self._make(**{self._field: [self._item(i) for i in range(n)]}, next_page_token=token)

    def _item(self, i: int) -> Any:
        return {"claims": pb.Claim, "insurers": pb.Insurer, "invoices": bpb.Invoice}[self._field]()


async def test_list_claims_follows_tokens_to_the_end() -> None:
    async with HospitalClient(CREDS) as client:
        pages = Pages(pb.ListClaimsResponse, "claims", [(2, "t1"), (2, "t2"), (1, "")])
        client.stub.ListClaims = pages  # type: ignore[method-assign]
        assert len(await client.list_claims()) == 5
        assert pages.tokens == ["", "t1", "t2"]


@pytest.mark.parametrize("loop", [[(1, "t1"), (1, "t1")], [(1, "t1"), (1, "t2"), (1, "t1")]])
async def test_a_repeated_token_stops_every_listing(loop: list[tuple[int, str]]) -> None:
    async with HospitalClient(CREDS) as client:
        client.stub.ListClaims = Pages(pb.ListClaimsResponse, "claims", loop)  # type: ignore[method-assign]
        with pytest.raises(RepeatedPageToken):
            await client.list_claims()
        client.stub.ListInsurers = Pages(pb.ListInsurersResponse, "insurers", loop)  # type: ignore[method-assign]
        with pytest.raises(RepeatedPageToken):
            await client.list_insurers()
    async with BillingClient(CREDS) as billing:
        billing.stub.ListInvoices = Pages(bpb.ListInvoicesResponse, "invoices", loop)  # type: ignore[method-assign]
        with pytest.raises(RepeatedPageToken):
            await billing.list_invoices("AIA")
