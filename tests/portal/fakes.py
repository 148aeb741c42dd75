"""Stand-ins for the SDK clients a served portal calls, refusing as the hub does
(its own checks, imported from services/billing), so pages are tested without
the real stack. The insurer's is the insurer kit's FakeGateway with the SDK's
own `decide` on top."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import grpc

from iclaim.client.insurer import InsurerClient
from iclaim.errors import IclaimError
from iclaim.v1 import billing_service_pb2 as bpb
from iclaim.v1 import claim_service_pb2 as pb
from services.billing.domain import check_hospital, check_insurer, check_period
from tests.support.insurer_kit import FakeGateway, rpc_error


def as_the_hub(check: Callable[..., object], *args: Any) -> None:
    """Runs one of the hub's checks; its refusal as the gateway would send it."""
    try:
        check(*args)
    except IclaimError as err:
        raise rpc_error(grpc.StatusCode[err.code.name], err.reason) from None


@dataclass
class FakeBilling:
    """No invoices; statements refused as services/billing refuses them."""

    hospital_side: bool = True
    statements: list[tuple[str, date, date]] = field(default_factory=list)
    list_error: BaseException | None = None

    async def statement(self, counterparty: str, start: date, end: date) -> bpb.Statement:
        as_the_hub(check_insurer if self.hospital_side else check_hospital, counterparty)
        as_the_hub(check_period, start, end)
        self.statements.append((counterparty, start, end))
        return bpb.Statement()

    async def get_invoice(self, invoice_id: str) -> bpb.Invoice:
        raise rpc_error(grpc.StatusCode.NOT_FOUND, "INVOICE_NOT_FOUND")

    async def list_invoices(self, counterparty: str = "") -> list[bpb.Invoice]:
        if self.list_error is not None:
            raise self.list_error
        return []


@dataclass
class FakeHospital:
    """The hospital's claims by transaction id; cancel as the claim router does."""

    claims: dict[str, pb.Claim] = field(default_factory=dict)

    async def list_insurers(self) -> list[pb.Insurer]:
        return [pb.Insurer(code="AIA", display_name="AIA", available=True)]

    async def list_claims(self, **filters: object) -> list[pb.Claim]:
        return list(self.claims.values())

    async def get_claim(self, transaction_id: str) -> pb.Claim:
        if transaction_id not in self.claims:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, "CLAIM_NOT_FOUND")
        return self.claims[transaction_id]

    async def cancel_claim(self, transaction_id: str, reason: str) -> pb.Claim:
        claim = await self.get_claim(transaction_id)
        if claim.state not in (
            pb.CLAIM_STATE_RECEIVED,
            pb.CLAIM_STATE_DELIVERED,
            pb.CLAIM_STATE_PENDING_REVIEW,
        ):
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "CLAIM_NOT_CANCELLABLE")
        claim.state = pb.CLAIM_STATE_CANCELLED
        return claim


@dataclass
class FakeInsurer(FakeGateway):
    """The gateway as the insurer kit's tests fake it, with InsurerClient.decide
    (sealing to the hospital's key, then post_decision) over it."""

    creds: Any = None
    decide = InsurerClient.decide
