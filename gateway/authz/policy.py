"""Which role may call which public RPC (PROTOCOL.md §2, §3, §5, §6, §9).

Pure data: the authz service enforces it and the Envoy renderer routes exactly
these paths, so a method missing here is UNIMPLEMENTED at the edge.
"""

from __future__ import annotations

from enum import StrEnum

# Unauthenticated by design (§3): health checks and reflection. Named with the
# access-log contract, which audit_log reads too.
from iclaim_hub.common.access_log import OPEN_SERVICES as OPEN_SERVICES


class Role(StrEnum):
    HOSPITAL = "hospital"
    INSURER = "insurer"


HOSPITAL = frozenset({Role.HOSPITAL})
INSURER = frozenset({Role.INSURER})
BOTH = frozenset({Role.HOSPITAL, Role.INSURER})

CLAIM_SERVICE = "iclaim.v1.ClaimService"
INSURER_SERVICE = "iclaim.v1.InsurerService"
BILLING_SERVICE = "iclaim.v1.BillingService"
AUDIT_TRAIL_SERVICE = "iclaim.v1.AuditTrailService"

# method path -> roles allowed to call it.
ALLOWED_ROLES: dict[str, frozenset[Role]] = {
    f"/{CLAIM_SERVICE}/ListInsurers": HOSPITAL,
    f"/{CLAIM_SERVICE}/SubmitClaim": HOSPITAL,
    f"/{CLAIM_SERVICE}/GetClaim": HOSPITAL,
    f"/{CLAIM_SERVICE}/WatchClaim": HOSPITAL,
    f"/{CLAIM_SERVICE}/ListClaims": HOSPITAL,
    f"/{CLAIM_SERVICE}/CancelClaim": HOSPITAL,
    f"/{INSURER_SERVICE}/PullClaims": INSURER,
    f"/{INSURER_SERVICE}/GetHospital": INSURER,
    f"/{INSURER_SERVICE}/PostDecision": INSURER,
    f"/{BILLING_SERVICE}/CreateInvoice": HOSPITAL,
    f"/{BILLING_SERVICE}/ListInvoices": BOTH,
    f"/{BILLING_SERVICE}/GetInvoice": BOTH,
    f"/{BILLING_SERVICE}/AcknowledgeInvoice": INSURER,
    f"/{BILLING_SERVICE}/VoidInvoice": HOSPITAL,
    f"/{BILLING_SERVICE}/PostPayment": INSURER,
    f"/{BILLING_SERVICE}/GetStatement": BOTH,
    # Read-only; the audit service limits every read to the caller's own entries.
    f"/{AUDIT_TRAIL_SERVICE}/GetAuditCheckpoint": BOTH,
    f"/{AUDIT_TRAIL_SERVICE}/ListAuditEntries": BOTH,
    f"/{AUDIT_TRAIL_SERVICE}/GetAuditInclusionProof": BOTH,
    f"/{AUDIT_TRAIL_SERVICE}/GetAuditConsistencyProof": BOTH,
}

# Calls that may legitimately take up to ~35 s (decision wait, long poll) and
# the one server stream, which stays open until a decision.
LONG_UNARY = frozenset(
    {
        f"/{CLAIM_SERVICE}/SubmitClaim",
        f"/{INSURER_SERVICE}/PullClaims",
    }
)
SERVER_STREAMS = frozenset({f"/{CLAIM_SERVICE}/WatchClaim"})


class UnknownMethod(LookupError):
    pass


def service_of(method: str) -> str:
    return method.split("/")[1] if method.count("/") == 2 else ""


def allowed_roles(method: str) -> frozenset[Role]:
    try:
        return ALLOWED_ROLES[method]
    except KeyError:
        raise UnknownMethod(method) from None


def may_call(role: str, method: str) -> bool:
    """True when a principal of `role` may call `method`; raises UnknownMethod."""
    roles = allowed_roles(method)
    return any(role == r.value for r in roles)
