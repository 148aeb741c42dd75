"""A repeated PENDING_REVIEW is the same decision whatever its envelope: an insurer
that lost the answer to its post seals the ClaimResponse anew and posts again
(found by `make soak`: the retry was recorded as a second state change)."""

from __future__ import annotations

from services.claim_router.domain import DecisionInput, State, decision_matches


def _d(state: State, envelope: str, reason: str = "", amount: int = 0) -> DecisionInput:
    return DecisionInput("txn_" + "0" * 28, "AIA", state, amount, envelope, reason)


def test_pending_review_again_with_a_new_envelope_is_the_same_decision() -> None:
    assert decision_matches(State.PENDING_REVIEW, 0, "jwe-1", "", _d(State.PENDING_REVIEW, "jwe-2"))


def test_pending_review_with_another_reason_is_not() -> None:
    assert not decision_matches(
        State.PENDING_REVIEW, 0, "jwe-1", "", _d(State.PENDING_REVIEW, "jwe-2", "MORE_INFO")
    )


def test_a_final_decision_must_match_in_full() -> None:
    assert decision_matches(State.APPROVED, 900, "jwe-1", "", _d(State.APPROVED, "jwe-1", amount=900))
    assert not decision_matches(State.APPROVED, 900, "jwe-1", "", _d(State.APPROVED, "jwe-2", amount=900))
