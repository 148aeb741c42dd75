"""The soak's verdicts, as pure functions over what the databases hold (read by
evidence.py) and what the clients were told. No I/O here, so each check can be
shown to fail on synthetic data (tests/unit/test_soak_checks.py)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Final states, and the reasons the contract names for the ones that are not a
# decision (docs/protocol.md §5, §10.4; README "Errors").
DECIDED = frozenset({"APPROVED", "PARTIALLY_APPROVED", "DENIED"})
ENDED_WITH_REASON = {
    "FAILED": frozenset({"DELIVERY_EXPIRED"}),
    "CANCELLED": frozenset({"CANCELLED_BY_HOSPITAL"}),
}
# The order a claim's states go through; DELIVERED and PENDING_REVIEW may be skipped.
RANK = {
    "RECEIVED": 0, "DELIVERED": 1, "PENDING_REVIEW": 2,
    "APPROVED": 3, "PARTIALLY_APPROVED": 3, "DENIED": 3, "CANCELLED": 3, "FAILED": 3,
    "PAID": 4,
}  # fmt: skip
BILLABLE = frozenset({"APPROVED", "PARTIALLY_APPROVED", "PAID"})


@dataclass(frozen=True)
class RouterClaim:
    transaction_id: str
    hospital_code: str
    claim_ref: str
    state: str  # ClaimState name without CLAIM_STATE_
    status_reason: str
    approved_satang: int
    holds_envelope: bool = False  # the router still keeps the claim's envelope


@dataclass(frozen=True)
class StateChange:
    """One CLAIM_STATE_CHANGE: from the router's outbox (position = outbox id) or
    from the audit log (position = leaf index)."""

    transaction_id: str
    state: str
    event_id: str
    position: int


@dataclass(frozen=True)
class Ledger:
    lines_sum: int  # all journal lines, debits +, credits -: 0 when balanced
    cached_sum: int  # the accounts' cached balances
    accounts_off: int  # accounts whose cached balance differs from their lines
    approvals: Mapping[str, int]  # transaction id -> APPROVAL journals naming it
    intake: Mapping[str, tuple[str, int]]  # transaction id -> (state, approved) billing recorded
    payments: Mapping[str, int] = field(default_factory=dict)  # transaction id -> PAYMENT journals naming it
    settled: Mapping[str, int] = field(default_factory=dict)  # transaction id -> satang settled (non-zero)


def lost(
    acked: Mapping[tuple[str, str], set[str]], router: Mapping[tuple[str, str], RouterClaim]
) -> list[str]:
    """Acknowledged claims (hospital, claim_ref) -> the transaction ids the client
    was given. Lost: not stored, stored under another id, given two ids, or not
    in a final state the contract names (a decision, or an end with its reason)."""
    out = []
    for key, tids in sorted(acked.items()):
        rec = router.get(key)
        if rec is None:
            out.append(f"{key}: acknowledged as {sorted(tids)} but not stored")
        elif tids != {rec.transaction_id}:
            out.append(f"{key}: acknowledged as {sorted(tids)}, stored as {rec.transaction_id}")
        elif not final_with_reason(rec):
            out.append(f"{rec.transaction_id}: {rec.state} {rec.status_reason}".rstrip())
    return out


@dataclass(frozen=True)
class Outcome:
    """One acknowledged claim as the HIS planned it and what it was last told."""

    key: tuple[str, str]  # (hospital, claim_ref)
    policy: str
    billed_satang: int
    told: str  # the final state the hospital saw ("" if none)


_LIMIT = re.compile(r"^LIMIT-([0-9]+)(?:-|$)")


def policy_outcome(policy: str, billed_satang: int) -> tuple[str, int]:
    """(state, approved satang) the sandbox's magic policy decides (docs/protocol.md
    §8), written from the contract, not from the sandbox's code."""
    if policy.startswith("DENY-"):
        return "DENIED", 0
    limit = _LIMIT.match(policy)
    if limit is not None and billed_satang > int(limit[1]):
        return ("PARTIALLY_APPROVED", int(limit[1])) if int(limit[1]) else ("DENIED", 0)
    return "APPROVED", billed_satang


def wrong_outcomes(outcomes: Iterable[Outcome], router: Mapping[tuple[str, str], RouterClaim]) -> list[str]:
    """Stored claims whose decision is not their policy's (a claim this soak never
    cancels and never lets expire that ended FAILED or CANCELLED among them), or
    that the hospital was told otherwise, or never told. Claims not stored are
    `lost`'s business."""
    out = []
    for o in outcomes:
        rec = router.get(o.key)
        if rec is None:
            continue
        want, approved = policy_outcome(o.policy, o.billed_satang)
        stored = want if rec.state == "PAID" and want in BILLABLE else rec.state
        if stored != want or (want != "DENIED" and rec.approved_satang != approved):
            out.append(
                f"{rec.transaction_id}: {rec.state} {rec.approved_satang}, its policy says {want} {approved}"
            )
        elif o.told not in (want, "PAID"):
            out.append(
                f"{rec.transaction_id}: stored {rec.state}, the hospital was told {o.told or 'nothing final'}"
            )
    return out


def replays_admitted(admitted: Mapping[str, int], replayed: Mapping[str, str]) -> list[str]:
    """`admitted`: request token -> access-log lines the gateway admitted with it
    (a principal set); `replayed`: token -> method, for each capture replayed.
    A captured request was admitted once (its original call, which returned
    OK); more is a replay let through, whatever its answer said. (A line lost
    with a SIGKILLed Envoy can only hide one, never invent one.)"""
    return sorted(
        f"{method}: admitted {admitted[token]} times"
        for token, method in replayed.items()
        if admitted.get(token, 0) > 1
    )


# Originals found in the access log, at least: a line lost with a SIGKILLed
# Envoy (it flushes every second) may go; a log with none would make
# replays_admitted vacuous.
LOG_COVERAGE = 0.9


def replay_log_covered(admitted: Mapping[str, int], replayed: Mapping[str, str]) -> tuple[int, bool]:
    """(how many replayed captures' originals the log shows admitted, enough)."""
    found = sum(1 for token in replayed if admitted.get(token, 0) >= 1)
    return found, found >= LOG_COVERAGE * len(replayed) and (found > 0 or not replayed)


def final_with_reason(rec: RouterClaim) -> bool:
    if rec.state in DECIDED or rec.state == "PAID":
        return True
    return rec.status_reason in ENDED_WITH_REASON.get(rec.state, frozenset())


# States after which no delivery sends a claim's envelope again (docs/protocol.md
# §4): the router keeps none. FAILED keeps it (an operator may redrive it).
ENVELOPE_SPENT = DECIDED | {"CANCELLED", "PAID"}


def envelopes_kept(router: Iterable[RouterClaim]) -> list[str]:
    """Claims done with that the router still keeps the envelope of."""
    return sorted(
        f"{rec.transaction_id}: {rec.state}"
        for rec in router
        if rec.state in ENVELOPE_SPENT and rec.holds_envelope
    )


def by_claim(changes: Iterable[StateChange]) -> dict[str, list[StateChange]]:
    out: dict[str, list[StateChange]] = defaultdict(list)
    for c in sorted(changes, key=lambda c: c.position):
        out[c.transaction_id].append(c)
    return out


def history_problems(history: Sequence[StateChange]) -> list[str]:
    """One claim's state changes in order: from RECEIVED, each state once, never
    backwards, at most one decision."""
    states = [c.state for c in history]
    if not states or states[0] != "RECEIVED":
        return [f"starts with {states[:1]}, not RECEIVED"]
    for before, after in zip(states, states[1:], strict=False):
        if RANK.get(after, -1) <= RANK.get(before, -1):
            return [f"{' -> '.join(states)}"]
    return []


def history_ends(claims: Iterable[RouterClaim], router: Mapping[str, list[StateChange]]) -> list[str]:
    """Each stored claim's emitted changes end at its stored state, and no change
    names a claim not stored: a state written without its event (or an event
    without its write) leaves the audit log and billing agreeing with the outbox
    and still wrong."""
    out, stored = [], set()
    for rec in claims:
        stored.add(rec.transaction_id)
        history = router.get(rec.transaction_id, [])
        if not history:
            out.append(f"{rec.transaction_id}: stored {rec.state}, no state change emitted")
        elif history[-1].state != rec.state:
            out.append(
                f"{rec.transaction_id}: stored {rec.state}, its last change emitted {history[-1].state}"
            )
    out.extend(f"{tid}: changes emitted for a claim not stored" for tid in sorted(set(router) - stored))
    return out


def decided_twice(
    router: Mapping[str, list[StateChange]],
    audit: Mapping[str, list[StateChange]],
    billing_events: Mapping[str, int],
    ledger: Ledger,
) -> dict[str, str]:
    """Claims whose decision was recorded more than once anywhere: as a state
    change in the router (its outbox keeps every change) or in the audit log,
    as billing intake events the router emitted, or as ledger approvals."""
    out: dict[str, str] = {}
    for where, changes in (("router", router), ("audit", audit)):
        for tid, history in changes.items():
            decisions = [c.state for c in history if c.state in DECIDED]
            if len(decisions) > 1:
                out.setdefault(tid, f"{where}: {decisions}")
    for tid, n in billing_events.items():
        if n > 1:
            out.setdefault(tid, f"router emitted {n} billing intake events")
    for tid, n in ledger.approvals.items():
        if n > 1:
            out.setdefault(tid, f"{n} APPROVAL journals")
    return out


def audit_problems(
    router: Mapping[str, list[StateChange]], audit: Mapping[str, list[StateChange]]
) -> list[str]:
    """The audit log holds each claim's state changes exactly once, in order:
    the same events as the router emitted (by event id), in the same order, and
    a history that makes sense."""
    out = []
    for tid in sorted(set(router) | set(audit)):
        emitted = [c.event_id for c in router.get(tid, [])]
        logged = [c.event_id for c in audit.get(tid, [])]
        if logged != emitted:
            missing = set(emitted) - set(logged)
            extra = [e for e in logged if e not in emitted or logged.count(e) > 1]
            out.append(
                f"{tid}: audit {len(logged)} vs router {len(emitted)} changes (missing {len(missing)},"
                f" extra {len(extra)}, same set: {set(emitted) == set(logged)})"
            )
            continue
        out.extend(f"{tid}: {p}" for p in history_problems(audit.get(tid, [])))
    return out


def payment_problems(ledger: Ledger, router: Iterable[RouterClaim], paid: Mapping[str, int]) -> list[str]:
    """The ledger against what the soak's insurers paid (`paid`: transaction id ->
    satang, each PostPayment that succeeded; a payment re-sent is the same one):
    each paid claim settled by that much in one PAYMENT journal and PAID at the
    router; nothing else settled or PAID; no APPROVAL of a claim the router did
    not approve. The trial balance alone cannot see these: every journal is
    balanced by the ledger's own constraint, a doubled or lost one too."""
    out = []
    states = {rec.transaction_id: rec.state for rec in router}
    for tid, amount in sorted(paid.items()):
        if ledger.settled.get(tid, 0) != amount:
            out.append(f"{tid}: paid {amount}, settled {ledger.settled.get(tid, 0)} in billing")
        if ledger.payments.get(tid, 0) != 1:
            out.append(f"{tid}: paid once, {ledger.payments.get(tid, 0)} PAYMENT journals")
        if states.get(tid) != "PAID":
            out.append(f"{tid}: paid, {states.get(tid)} at the router")
    for tid in sorted((set(ledger.settled) | set(ledger.payments)) - set(paid)):
        out.append(f"{tid}: settled or paid in billing, never paid by its insurer")
    out.extend(
        f"{tid}: PAID at the router, never paid"
        for tid, st in sorted(states.items())
        if st == "PAID" and tid not in paid
    )
    out.extend(
        f"{tid}: APPROVAL journal, {states.get(tid)} at the router"
        for tid in sorted(ledger.approvals)
        if states.get(tid) not in BILLABLE
    )
    return out


def ledger_problems(ledger: Ledger, router: Iterable[RouterClaim]) -> list[str]:
    """Beyond the trial balance: cached balances agree with the lines, and every
    approval the router recorded reached billing with its amount, once."""
    out = []
    if ledger.cached_sum != ledger.lines_sum:
        out.append(f"accounts' cached balances sum to {ledger.cached_sum}, lines to {ledger.lines_sum}")
    if ledger.accounts_off:
        out.append(f"{ledger.accounts_off} accounts' cached balance differs from their lines")
    for rec in router:
        if rec.state not in BILLABLE:
            continue
        got = ledger.intake.get(rec.transaction_id)
        if got is None:
            out.append(f"{rec.transaction_id}: {rec.state} at the router, unknown to billing")
        elif got[1] != rec.approved_satang:
            out.append(
                f"{rec.transaction_id}: approved {rec.approved_satang} at the router, {got[1]} in billing"
            )
        elif rec.approved_satang > 0 and ledger.approvals.get(rec.transaction_id, 0) != 1:
            out.append(
                f"{rec.transaction_id}: {ledger.approvals.get(rec.transaction_id, 0)} APPROVAL journals"
            )
    return out


def final_line(
    claims: int, kills: int, flushes: int, restarts: int, lost: int, twice: int, accepted: int,
    audit_ok: bool, trial_balance: int,
) -> str:  # fmt: skip
    return (
        f"soak: {claims} claims, {kills} kills, {flushes} Redis flushes, {restarts} PostgreSQL restarts;"
        f" lost {lost}, decided twice {twice}, replays accepted {accepted},"
        f" audit {'verified' if audit_ok else 'FAILED'}, trial balance {trial_balance}"
    )
