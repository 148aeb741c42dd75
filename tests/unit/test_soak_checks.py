"""The soak's checks (bench/soak/checks.py) catch what they are there to catch:
shown on synthetic data, a lost claim, a decision recorded twice, an audit log
missing or repeating a state change, and an unbalanced ledger."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from bench.soak import checks, evidence
from bench.soak.checks import Ledger, RouterClaim, StateChange
from bench.soak.replay import classify

T1, T2 = "txn_" + "1" * 28, "txn_" + "2" * 28


def _claim(tid: str, ref: str, state: str = "APPROVED", reason: str = "", amount: int = 500) -> RouterClaim:
    return RouterClaim(tid, "10670", ref, state, reason, amount)


def _changes(tid: str, *states: str, start: int = 0) -> list[StateChange]:
    return [StateChange(tid, s, f"ev-{tid}-{i}", start + i) for i, s in enumerate(states)]


def _ledger(**over: object) -> Ledger:
    base: dict[str, object] = {
        "lines_sum": 0, "cached_sum": 0, "accounts_off": 0,
        "approvals": {T1: 1}, "intake": {T1: ("APPROVED", 500)},
    }  # fmt: skip
    base.update(over)
    return Ledger(**base)  # type: ignore[arg-type]


def test_every_acknowledged_claim_decided_is_nothing_lost() -> None:
    router = {("10670", "A"): _claim(T1, "A"), ("10670", "B"): _claim(T2, "B", "FAILED", "DELIVERY_EXPIRED")}
    assert checks.lost({("10670", "A"): {T1}, ("10670", "B"): {T2}}, router) == []


def test_a_skipped_claim_a_stuck_one_and_a_second_id_are_lost() -> None:
    router = {("10670", "B"): _claim(T2, "B", "DELIVERED")}
    found = checks.lost({("10670", "A"): {T1}, ("10670", "B"): {T2}}, router)
    assert len(found) == 2 and "not stored" in found[0] and "DELIVERED" in found[1]
    router = {("10670", "A"): _claim(T1, "A")}
    assert checks.lost({("10670", "A"): {T1, T2}}, router)  # one claim_ref, two transaction ids
    assert checks.lost({("10670", "A"): {T1}}, {("10670", "A"): _claim(T1, "A", "FAILED", "")})  # no reason


def test_an_injected_second_decision_is_decided_twice() -> None:
    good = checks.by_claim(_changes(T1, "RECEIVED", "DELIVERED", "APPROVED"))
    assert checks.decided_twice(good, good, {T1: 1}, _ledger()) == {}
    twice = checks.by_claim(_changes(T1, "RECEIVED", "APPROVED", "APPROVED"))
    assert T1 in checks.decided_twice(twice, good, {T1: 1}, _ledger())
    assert T1 in checks.decided_twice(good, twice, {T1: 1}, _ledger())
    assert T1 in checks.decided_twice(good, good, {T1: 2}, _ledger())
    assert T1 in checks.decided_twice(good, good, {T1: 1}, _ledger(approvals={T1: 2}))


def test_the_audit_log_must_hold_each_change_once_in_order() -> None:
    router = checks.by_claim(_changes(T1, "RECEIVED", "PENDING_REVIEW", "APPROVED", "PAID"))
    assert checks.audit_problems(router, router) == []
    missing = checks.by_claim(_changes(T1, "RECEIVED", "PENDING_REVIEW", "APPROVED"))
    assert checks.audit_problems(router, missing)
    repeated = checks.by_claim([*router[T1], StateChange(T1, "APPROVED", "ev-x", 99)])
    assert checks.audit_problems(repeated, repeated)  # the router emitted it twice: out of order
    swapped = {T1: [router[T1][1], router[T1][0], *router[T1][2:]]}
    assert checks.audit_problems(router, swapped)
    stray = checks.by_claim(_changes(T2, "RECEIVED"))
    assert checks.audit_problems(router, {**router, **stray})


def test_a_finished_claim_that_keeps_its_envelope_is_found() -> None:
    def held(tid: str, state: str, reason: str = "") -> RouterClaim:
        return RouterClaim(tid, "10670", tid[-4:], state, reason, 500, holds_envelope=True)

    T3, T4, T5 = ("txn_" + c * 28 for c in "345")
    claims = [
        _claim(T1, "A"),  # decided, dropped
        held(T2, "PAID"),
        held(T3, "FAILED", "DELIVERY_EXPIRED"),  # kept for a redrive
        held(T4, "DELIVERED"),  # still to be decided
        held(T5, "CANCELLED"),
    ]
    assert checks.envelopes_kept(claims) == [f"{T2}: PAID", f"{T5}: CANCELLED"]
    assert checks.envelopes_kept(claims[:1] + claims[2:4]) == []


def test_state_histories() -> None:
    assert checks.history_problems(_changes(T1, "RECEIVED", "DELIVERED", "DENIED")) == []
    assert checks.history_problems(_changes(T1, "DELIVERED", "DENIED"))
    assert checks.history_problems(_changes(T1, "RECEIVED", "PENDING_REVIEW", "PENDING_REVIEW", "APPROVED"))
    assert checks.history_problems(_changes(T1, "RECEIVED", "APPROVED", "DELIVERED"))


def test_ledger_problems() -> None:
    router = [_claim(T1, "A"), _claim(T2, "B", "DENIED", amount=0)]
    assert checks.ledger_problems(_ledger(), router) == []
    assert checks.ledger_problems(_ledger(cached_sum=7), router)
    assert checks.ledger_problems(_ledger(accounts_off=1), router)
    assert checks.ledger_problems(_ledger(intake={}), router)  # an approval billing never heard of
    assert checks.ledger_problems(_ledger(intake={T1: ("APPROVED", 499)}), router)


def test_replay_verdicts() -> None:
    s = grpc.StatusCode
    assert classify(s.UNAUTHENTICATED, "NONCE_REPLAYED", True) == "refused"
    assert classify(s.UNAVAILABLE, "NONCE_STORE_RECOVERING", True) == "refused"
    assert classify(s.UNAVAILABLE, "", False) == "unanswered"  # Envoy: its auth service is down
    assert classify(s.OK, "", True) == "accepted"
    assert classify(s.NOT_FOUND, "CLAIM_NOT_FOUND", True) == "accepted"  # it reached the router
    assert classify(s.FAILED_PRECONDITION, "DECISION_CONFLICT", True) == "accepted"


def test_the_last_line() -> None:
    line = checks.final_line(1000, 5, 5, 3, 0, 0, 0, True, 0)
    assert line == (
        "soak: 1000 claims, 5 kills, 5 Redis flushes, 3 PostgreSQL restarts; lost 0, decided twice 0,"
        " replays accepted 0, audit verified, trial balance 0"
    )
    assert "audit FAILED" in checks.final_line(1, 0, 0, 0, 1, 0, 0, False, 3)


def test_each_policy_decides_as_the_contract_says() -> None:
    assert checks.policy_outcome("POL-7", 1_000) == ("APPROVED", 1_000)
    assert checks.policy_outcome("SLOW-7", 1_000) == ("APPROVED", 1_000)
    assert checks.policy_outcome("REVIEW-7", 1_000) == ("APPROVED", 1_000)
    assert checks.policy_outcome("DENY-7", 1_000) == ("DENIED", 0)
    assert checks.policy_outcome("LIMIT-400-7", 1_000) == ("PARTIALLY_APPROVED", 400)
    assert checks.policy_outcome("LIMIT-4000-7", 1_000) == ("APPROVED", 1_000)
    assert checks.policy_outcome("LIMIT-0-7", 1_000) == ("DENIED", 0)


def test_a_wrong_decision_an_unasked_end_and_a_wrong_answer_are_found() -> None:
    a, b = ("10670", "A"), ("10670", "B")

    def outcome(key: tuple[str, str], policy: str, told: str) -> checks.Outcome:
        return checks.Outcome(key, policy, 500, told)

    right = {a: _claim(T1, "A"), b: _claim(T2, "B", "PARTIALLY_APPROVED", amount=200)}
    told = [outcome(a, "POL-1", "APPROVED"), outcome(b, "LIMIT-200-2", "PARTIALLY_APPROVED")]
    assert checks.wrong_outcomes(told, right) == []
    paid = {**right, a: _claim(T1, "A", "PAID")}  # paid after the HIS saw it approved
    assert checks.wrong_outcomes(told, paid) == []

    denied = {**right, a: _claim(T1, "A", "DENIED", amount=0)}
    assert "its policy says APPROVED 500" in checks.wrong_outcomes(told, denied)[0]
    short = {**right, b: _claim(T2, "B", "PARTIALLY_APPROVED", amount=199)}
    assert checks.wrong_outcomes(told, short)
    expired = {**right, a: _claim(T1, "A", "FAILED", "DELIVERY_EXPIRED", amount=0)}
    assert checks.wrong_outcomes(told, expired)  # the contract names it, but nothing here causes it
    assert checks.wrong_outcomes([outcome(a, "POL-1", "DENIED"), told[1]], right)  # told otherwise
    assert "told nothing final" in checks.wrong_outcomes([outcome(a, "POL-1", ""), told[1]], right)[0]
    assert checks.wrong_outcomes([outcome(("10670", "C"), "POL-3", "")], right) == []  # lost's business


def test_a_change_without_its_event_breaks_the_history() -> None:
    claims = [_claim(T1, "A"), _claim(T2, "B", "DENIED")]
    router = checks.by_claim(
        _changes(T1, "RECEIVED", "APPROVED") + _changes(T2, "RECEIVED", "DENIED", start=10)
    )
    assert checks.history_ends(claims, router) == []
    behind = checks.by_claim(_changes(T1, "RECEIVED") + _changes(T2, "RECEIVED", "DENIED", start=10))
    assert checks.history_ends(claims, behind) == [f"{T1}: stored APPROVED, its last change emitted RECEIVED"]
    silent = checks.by_claim(_changes(T2, "RECEIVED", "DENIED", start=10))
    assert checks.history_ends(claims, silent) == [f"{T1}: stored APPROVED, no state change emitted"]
    assert checks.history_ends(claims[1:], router) == [f"{T1}: changes emitted for a claim not stored"]


def test_the_ledger_must_agree_with_what_the_insurers_paid() -> None:
    router = [_claim(T1, "A", "PAID"), _claim(T2, "B", "APPROVED")]
    right = _ledger(payments={T1: 1}, settled={T1: 500}, approvals={T1: 1, T2: 1})
    assert checks.payment_problems(right, router, {T1: 500}) == []

    doubled = _ledger(payments={T1: 2}, settled={T1: 500}, approvals={T1: 1, T2: 1})
    assert checks.payment_problems(doubled, router, {T1: 500}) == [f"{T1}: paid once, 2 PAYMENT journals"]
    short = _ledger(payments={T1: 1}, settled={T1: 400}, approvals={T1: 1, T2: 1})
    assert checks.payment_problems(short, router, {T1: 500}) == [f"{T1}: paid 500, settled 400 in billing"]
    lost = _ledger(approvals={T1: 1, T2: 1})
    assert len(checks.payment_problems(lost, router, {T1: 500})) == 2
    not_paid_at_router = [_claim(T1, "A", "APPROVED"), router[1]]
    assert checks.payment_problems(right, not_paid_at_router, {T1: 500}) == [
        f"{T1}: paid, APPROVED at the router"
    ]
    assert checks.payment_problems(right, router, {}) == [
        f"{T1}: settled or paid in billing, never paid by its insurer",
        f"{T1}: PAID at the router, never paid",
    ]
    denied = [router[0], _claim(T2, "B", "DENIED", amount=0)]
    assert checks.payment_problems(right, denied, {T1: 500}) == [
        f"{T2}: APPROVAL journal, DENIED at the router"
    ]


def test_a_replay_the_access_log_shows_admitted_twice_is_accepted(tmp_path: Path) -> None:
    key = "A" * 43  # 32 bytes, base64url
    tokens = evidence.replay_tokens(
        key, {("10670", "n" * 16): "GetClaim", ("10670", "m" * 16): "SubmitClaim"}
    )
    (got, submit) = sorted(tokens, key=lambda t: tokens[t])
    log = tmp_path / "envoy-access.log"
    lines = [
        {"principal": "10670", "request": got},  # the original call
        {"principal": "10670", "request": submit},
        {"principal": None, "request": None},  # a replay refused: no principal, no token
        {"principal": "10670", "request": submit},  # a replay let through, whatever it answered
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n{cut short")
    admitted = evidence.admitted_requests(log)
    assert admitted == {got: 1, submit: 2}
    assert checks.replays_admitted(admitted, tokens) == ["SubmitClaim: admitted 2 times"]
    assert checks.replays_admitted({got: 1, submit: 1}, tokens) == []
    assert evidence.admitted_requests(tmp_path / "none.log") == {}


def test_a_log_without_the_originals_makes_the_replay_check_fail_not_pass() -> None:
    tokens = {f"h:{n:032x}": "GetClaim" for n in range(10)}
    assert checks.replay_log_covered({t: 1 for t in tokens}, tokens) == (10, True)
    assert checks.replay_log_covered({t: 1 for t in list(tokens)[:9]}, tokens) == (9, True)
    assert checks.replay_log_covered({t: 1 for t in list(tokens)[:8]}, tokens) == (8, False)
    assert checks.replay_log_covered({}, tokens) == (0, False)  # no "request" field logged at all
    assert checks.replay_log_covered({}, {}) == (0, True)  # nothing replayed: nothing to find
