"""Who may call what (PROTOCOL.md §2, §3, §9)."""

from __future__ import annotations

import pytest

from gateway.authz import policy
from iclaim.public_api import public_methods as _public_methods
from iclaim.public_api import public_services


def test_every_public_rpc_has_a_rule_and_nothing_else_does() -> None:
    assert set(policy.ALLOWED_ROLES) == _public_methods()


@pytest.mark.parametrize("method", sorted(m for m in _public_methods() if "/iclaim.v1.ClaimService/" in m))
def test_claim_service_is_for_hospitals_only(method: str) -> None:
    assert policy.may_call("hospital", method)
    assert not policy.may_call("insurer", method)


@pytest.mark.parametrize("method", sorted(m for m in _public_methods() if "/iclaim.v1.InsurerService/" in m))
def test_insurer_service_is_for_insurers_only(method: str) -> None:
    assert policy.may_call("insurer", method)
    assert not policy.may_call("hospital", method)


@pytest.mark.parametrize(
    ("name", "hospital", "insurer"),
    [
        ("CreateInvoice", True, False),
        ("ListInvoices", True, True),
        ("GetInvoice", True, True),
        ("GetStatement", True, True),
        ("AcknowledgeInvoice", False, True),
        ("PostPayment", False, True),
    ],
)
def test_billing_roles_follow_section_9(name: str, hospital: bool, insurer: bool) -> None:
    method = f"/iclaim.v1.BillingService/{name}"
    assert policy.may_call("hospital", method) is hospital
    assert policy.may_call("insurer", method) is insurer


def test_unknown_roles_and_methods() -> None:
    assert not policy.may_call("admin", "/iclaim.v1.ClaimService/GetClaim")
    assert not policy.may_call("", "/iclaim.v1.BillingService/GetInvoice")
    with pytest.raises(policy.UnknownMethod):
        policy.may_call("hospital", "/iclaim.v1.ClaimService/DeleteEverything")
    with pytest.raises(policy.UnknownMethod):
        policy.may_call("hospital", "/iclaim.v1.ClaimService/GetClaim?x=1")


def test_long_calls_and_streams_are_public_methods() -> None:
    assert set(policy.ALLOWED_ROLES) >= policy.LONG_UNARY | policy.SERVER_STREAMS
    streaming = {
        f"/{s.full_name}/{m.name}" for s in public_services() for m in s.methods if m.server_streaming
    }
    assert streaming == set(policy.SERVER_STREAMS)


@pytest.mark.parametrize(
    "method", sorted(m for m in _public_methods() if "/iclaim.v1.AuditTrailService/" in m)
)
def test_audit_trail_is_for_both_roles(method: str) -> None:
    assert policy.may_call("hospital", method)
    assert policy.may_call("insurer", method)
