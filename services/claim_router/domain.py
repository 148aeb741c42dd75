"""Claim routing rules: validation, header checks, decision rules, paging.

Pure: no grpc, asyncpg or redis. Raises the shared error tree.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from iclaim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from iclaim.crypto.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    ProtectedHeader,
    parse_protected_header,
)
from iclaim_hub.registry.codes import check_code
from iclaim_hub.registry.model import (
    DEFAULT_KEY_GRACE_S,
    DELIVERY_MODES,
    DELIVERY_PULL,
    HEALTH_DOWN,
    HEALTH_HEALTHY,
    HEALTH_UNKNOWN,
    HEALTH_VALUES,
    PUSH_MODES,
    InsurerHealth,
    Principal,
)

CLAIM_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
TRANSACTION_ID_RE = re.compile(r"^txn_[0-9a-f]{28}$")
REASON_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
MAX_AMOUNT_SATANG = 10**13  # 100 billion THB: above any single claim
MAX_DECISION_TIMEOUT_S = 30.0
MAX_PULL_WAIT_S = 30.0
MAX_PULL_CLAIMS = 100
# Decisions one PullClaims may carry (§6.1): as many as one pull may lease.
MAX_CARRIED_DECISIONS = 100
# What one ListClaims or PullClaims answer may carry in envelopes: a page of
# 1 MiB envelopes must stay within the clients' 8 MiB receive limit
# (iclaim.limits.MAX_RESPONSE_BYTES). A page always holds at least one claim.
PAGE_ENVELOPE_BUDGET_BYTES = 6 * 1024 * 1024
# How long one hand-off of a push claim to the delivery layer hides it from the
# router's poller; a hand-off that dies mid-way is retried once it ends.
PUSH_HANDOFF_LEASE_S = 15.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CANCEL_REASON_MAX = 256
PAGE_TOKEN_MAX = 1024


class State(IntEnum):
    UNSPECIFIED = 0
    RECEIVED = 1
    DELIVERED = 2
    PENDING_REVIEW = 3
    APPROVED = 4
    PARTIALLY_APPROVED = 5
    DENIED = 6
    CANCELLED = 7
    FAILED = 8
    PAID = 9


OPEN_STATES = frozenset({State.RECEIVED, State.DELIVERED, State.PENDING_REVIEW})
DECIDED_STATES = frozenset({State.APPROVED, State.PARTIALLY_APPROVED, State.DENIED})
# WatchClaim ends after these.
TERMINAL_STATES = DECIDED_STATES | {State.CANCELLED, State.FAILED, State.PAID}
POSTABLE_STATES = frozenset({State.PENDING_REVIEW}) | DECIDED_STATES
BILLABLE_STATES = frozenset({State.APPROVED, State.PARTIALLY_APPROVED})
# A pull insurer is offered a claim until it posts a state for it (review or decision).
PULL_OFFER_STATES = frozenset({State.RECEIVED, State.DELIVERED})
# No delivery sends a claim's envelope again once it is in one of these: the
# router then drops it (store.py). Not FAILED: an operator's redrive of an
# expired delivery makes the claim RECEIVED again. Not PENDING_REVIEW: a
# review is not an end.
ENVELOPE_SPENT_STATES = DECIDED_STATES | {State.CANCELLED, State.PAID}

# §10.4: a push claim nobody took in time.
DELIVERY_EXPIRED = "DELIVERY_EXPIRED"
# §10.5: a pull insurer that has not pulled for this long while claims wait is DOWN.
DEFAULT_PULL_DOWN_AFTER_S = 300.0


def new_transaction_id() -> str:
    """Time-ordered (ms) then random: unique, unguessable, sortable."""
    return f"txn_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def check_transaction_id(value: str) -> str:
    # The format is public, so saying "malformed" reveals nothing about which
    # claims exist; a well-formed id that is not yours is still NOT_FOUND.
    if not TRANSACTION_ID_RE.fullmatch(value):
        raise InvalidArgument("transaction_id is malformed", reason="TRANSACTION_ID_INVALID")
    return value


def duration_s(seconds: int, nanos: int, *, field: str, reason: str, max_s: float) -> float:
    """A google.protobuf.Duration as seconds, refusing non-normalized values and
    anything outside 0..max_s."""
    if not -999_999_999 <= nanos <= 999_999_999 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument(f"{field} is not a valid Duration", reason=reason)
    value = seconds + nanos / 1e9
    if not 0 <= value <= max_s:
        raise InvalidArgument(f"{field} must be 0-{max_s:g} s", reason=reason)
    return value


def state_filter_of(value: int) -> State | None:
    """ListClaims' optional state: UNSPECIFIED means no filter; unknown is refused."""
    try:
        state = State(value)
    except ValueError:
        raise InvalidArgument(f"state {value} is not a ClaimState", reason="STATE_INVALID") from None
    return None if state == State.UNSPECIFIED else state


def state_or_unspecified(value: int) -> State:
    """A wire state; an unknown number is UNSPECIFIED, which no rule accepts."""
    try:
        return State(value)
    except ValueError:
        return State.UNSPECIFIED


def postable_state_of(value: int) -> State:
    state = state_or_unspecified(value)
    if state not in POSTABLE_STATES:
        raise InvalidArgument(
            "state must be PENDING_REVIEW, APPROVED, PARTIALLY_APPROVED or DENIED",
            reason="DECISION_STATE_INVALID",
        )
    return state


def check_carried_decisions(count: int) -> None:
    if count > MAX_CARRIED_DECISIONS:
        raise InvalidArgument(
            f"at most {MAX_CARRIED_DECISIONS} decisions per pull", reason="TOO_MANY_DECISIONS"
        )


def check_max_claims(value: int) -> int:
    if not 1 <= value <= MAX_PULL_CLAIMS:
        raise InvalidArgument(f"max_claims must be 1-{MAX_PULL_CLAIMS}", reason="MAX_CLAIMS_INVALID")
    return value


def check_insurer_code(value: str) -> str:
    return check_code(value, "insurer", "insurer_code is malformed")


def check_hospital_code(value: str) -> str:
    return check_code(value, "hospital", "hospital_code is malformed")


def check_cancel_reason(value: str) -> str:
    if len(value) > CANCEL_REASON_MAX:
        raise InvalidArgument("reason is too long", reason="CANCEL_REASON_INVALID")
    return value


@dataclass(frozen=True)
class SubmitInput:
    hospital_code: str
    claim_ref: str
    insurer_code: str
    billed_amount_satang: int
    envelope: str
    decision_timeout_s: float


def within_byte_budget(sizes: Sequence[int], budget: int = PAGE_ENVELOPE_BUDGET_BYTES) -> int:
    """How many of the leading items fit in `budget` bytes (at least one, if any)."""
    total = 0
    for n, size in enumerate(sizes):
        total += size
        if total > budget and n > 0:
            return n
    return len(sizes)


def validate_submit(s: SubmitInput) -> None:
    if not CLAIM_REF_RE.fullmatch(s.claim_ref):
        raise InvalidArgument("claim_ref must be 1-64 chars of [A-Za-z0-9._:/-]", reason="CLAIM_REF_INVALID")
    check_insurer_code(s.insurer_code)
    if not 0 < s.billed_amount_satang <= MAX_AMOUNT_SATANG:
        raise InvalidArgument(f"billed_amount_satang must be 1..{MAX_AMOUNT_SATANG}", reason="AMOUNT_INVALID")
    if not s.envelope:
        raise InvalidArgument("envelope is required", reason="ENVELOPE_MALFORMED")
    if len(s.envelope.encode("utf-8")) > MAX_ENVELOPE_BYTES:
        raise InvalidArgument(f"envelope exceeds {MAX_ENVELOPE_BYTES} bytes", reason="ENVELOPE_TOO_LARGE")
    if not 0 <= s.decision_timeout_s <= MAX_DECISION_TIMEOUT_S:
        raise InvalidArgument("decision_timeout must be 0-30 s", reason="DECISION_TIMEOUT_INVALID")


def read_header(envelope: str) -> ProtectedHeader:
    try:
        return parse_protected_header(envelope)
    except EnvelopeError as err:
        raise InvalidArgument(err.message, reason=err.reason) from None


def check_envelope_routing(
    header: ProtectedHeader,
    *,
    sender: str,
    recipient: Principal,
    claim_ref: str,
    amount_satang: int,
    key_grace_s: float = DEFAULT_KEY_GRACE_S,
) -> None:
    """§4: the authenticated header must agree with the request and the caller,
    and name the recipient's current key or a previous one still in its grace."""
    mismatches = []
    if header.sender != sender:
        mismatches.append("x-iclaim-sender")
    if header.recipient != recipient.code:
        mismatches.append("x-iclaim-recipient")
    if header.claim_ref != claim_ref:
        mismatches.append("x-iclaim-claim-ref")
    if header.amount_satang != amount_satang:
        mismatches.append("x-iclaim-amount-satang")
    if mismatches:
        raise InvalidArgument(
            "envelope header does not match the request: " + ", ".join(mismatches),
            reason="ENVELOPE_HEADER_MISMATCH",
            metadata={"fields": ",".join(mismatches)},
        )
    if header.kid not in recipient.accepted_kids(key_grace_s):
        raise InvalidArgument(
            "envelope kid is not a current or previous key of the recipient",
            reason="ENVELOPE_KID_UNKNOWN",
        )


def check_insurer_routable(insurer: Principal | None, code: str) -> Principal:
    if insurer is None or insurer.role != "insurer":
        raise NotFound(f"insurer {code} is not in the directory", reason="INSURER_NOT_FOUND")
    if not insurer.available or insurer.suspended:
        raise FailedPrecondition(f"insurer {code} is not accepting claims", reason="INSURER_UNAVAILABLE")
    return insurer


def claim_delivery_mode(insurer: Principal) -> str:
    """How a new claim to this insurer leaves the router. An insurer without a
    known mode is treated as pull: nothing is sent anywhere until it asks."""
    mode = insurer.delivery_mode
    return mode if mode in DELIVERY_MODES else DELIVERY_PULL


def insurer_health(
    mode: str | None,
    recorded: InsurerHealth | None,
    pull_waiting_since: datetime | None,
    *,
    now: datetime,
    pull_down_after_s: float = DEFAULT_PULL_DOWN_AFTER_S,
) -> str:
    """§10.5 health as a registry name. Push insurers: what the delivery layer
    recorded. Pull insurers: HEALTHY when they pulled within the window; DOWN
    when they have not, while a claim has waited for them that long; else UNKNOWN."""
    if mode in PUSH_MODES:
        health = recorded.health if recorded is not None else HEALTH_UNKNOWN
        return health if health in HEALTH_VALUES else HEALTH_UNKNOWN
    if mode != DELIVERY_PULL:
        return HEALTH_UNKNOWN
    window = timedelta(seconds=pull_down_after_s)
    last_pull = recorded.last_pull_at if recorded is not None else None
    if last_pull is not None and now - last_pull <= window:
        return HEALTH_HEALTHY
    if pull_waiting_since is not None and now - pull_waiting_since >= window:
        return HEALTH_DOWN
    return HEALTH_UNKNOWN


@dataclass(frozen=True)
class DecisionInput:
    transaction_id: str
    insurer_code: str
    state: State
    approved_amount_satang: int
    decision_envelope: str
    reason_code: str


def validate_decision_shape(d: DecisionInput, billed: int) -> None:
    if d.state not in POSTABLE_STATES:
        raise InvalidArgument(
            "state must be PENDING_REVIEW, APPROVED, PARTIALLY_APPROVED or DENIED",
            reason="DECISION_STATE_INVALID",
        )
    if d.reason_code and not REASON_CODE_RE.fullmatch(d.reason_code):
        raise InvalidArgument("reason_code must be UPPER_SNAKE", reason="REASON_CODE_INVALID")
    amount = d.approved_amount_satang
    ok = {
        State.PENDING_REVIEW: amount == 0,
        State.DENIED: amount == 0,
        State.APPROVED: amount == billed,
        State.PARTIALLY_APPROVED: 0 < amount < billed,
    }[d.state]
    if not ok:
        raise InvalidArgument(
            "approved_amount_satang does not fit the decision state "
            "(APPROVED = billed, PARTIALLY_APPROVED = 1..billed-1, otherwise 0)",
            reason="DECISION_AMOUNT_INVALID",
        )
    if d.state in DECIDED_STATES and not d.decision_envelope:
        raise InvalidArgument("decision_envelope is required", reason="ENVELOPE_MALFORMED")


def decision_matches(
    current_state: State,
    current_amount: int,
    current_envelope: str,
    current_reason: str,
    d: DecisionInput,
) -> bool:
    """The same decision again: a no-op. PENDING_REVIEW again with the same reason
    counts as the same whatever its envelope: an insurer retrying a post whose
    answer it lost seals its ClaimResponse anew (no two JWEs are equal), and the
    claim is under review either way; recording it again would be a second
    PENDING_REVIEW state change (found by `make soak`)."""
    if current_state == d.state == State.PENDING_REVIEW and current_reason == d.reason_code:
        return True
    return (
        current_state == d.state
        and current_amount == d.approved_amount_satang
        and current_envelope == d.decision_envelope
        and current_reason == d.reason_code
    )


def check_cancellable(state: State) -> None:
    if state not in OPEN_STATES:
        raise FailedPrecondition(
            f"claim is {state.name}; only undecided claims can be cancelled",
            reason="CLAIM_NOT_CANCELLABLE",
        )


# --- paging -------------------------------------------------------------------


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(fields: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields, sort_keys=True).encode()).decode()


def decode_page_token(token: str, keys: tuple[str, ...]) -> dict[str, str] | None:
    if not token:
        return None
    data = None
    if len(token) <= PAGE_TOKEN_MAX:  # also bounds JSON nesting depth
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeEncodeError, RecursionError):
            data = None
    if (
        not isinstance(data, dict)
        or set(data) != set(keys)
        or not all(isinstance(v, str) and len(v) <= 128 for v in data.values())
    ):
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID")
    return data


def decode_claims_cursor(token: str) -> tuple[datetime, str] | None:
    """ListClaims' page token: the (submitted_at, transaction_id) it ends after."""
    fields = decode_page_token(token, ("at", "tid"))
    if fields is None:
        return None
    # Both parts reach SQL: only what this service issues (an aware time, one of
    # its transaction ids), never a string PostgreSQL or the driver refuses.
    try:
        at = datetime.fromisoformat(fields["at"])
        if at.tzinfo is None or not TRANSACTION_ID_RE.fullmatch(fields["tid"]):
            raise ValueError("not a cursor of ours")
        at.astimezone(UTC)  # OverflowError near the calendar's ends
        return at, fields["tid"]
    except (ValueError, OverflowError):
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID") from None


def encode_claims_cursor(submitted_at: datetime, transaction_id: str) -> str:
    return encode_page_token({"at": submitted_at.isoformat(), "tid": transaction_id})


class AlreadyExistsClaimRef(AlreadyExists):
    def __init__(self, claim_ref: str) -> None:
        super().__init__(
            f"claim_ref {claim_ref} was already used for a different envelope",
            reason="CLAIM_REF_CONFLICT",
        )
