"""The router's recently stored claims: bounded, no envelopes; closed ones apart,
without a row version (never a start for a write)."""

from __future__ import annotations

import pytest

from services.claim_router.domain import State
from services.claim_router.recent import RecentClaims
from tests.support.router_records import claim_record


def test_an_open_claim_is_kept_without_its_envelope() -> None:
    recent = RecentClaims()
    rec = claim_record("RC1").with_changes(row_version=7)
    recent.stored(rec)
    kept = recent.get(rec.transaction_id)
    assert kept is not None and kept.envelope == "" and kept.envelope_bytes == rec.envelope_bytes
    assert kept.row_version == 7 and kept.claim_ref == "RC1"


def test_a_claim_that_leaves_the_open_states_or_has_no_version_goes() -> None:
    recent = RecentClaims()
    rec = claim_record("RC2").with_changes(row_version=7)
    recent.stored(rec)
    recent.stored(rec.with_changes(state=State.APPROVED, row_version=8))
    assert recent.get(rec.transaction_id) is None
    recent.stored(rec.with_changes(row_version=0))
    assert recent.get(rec.transaction_id) is None


def test_the_oldest_goes_first_beyond_the_bound() -> None:
    recent = RecentClaims(max_claims=2)
    a, b, c = (claim_record(r).with_changes(row_version=1) for r in ("RCA", "RCB", "RCC"))
    recent.stored(a)
    recent.stored(b)
    recent.stored(a.with_changes(row_version=2))  # stored again: the newest now
    recent.stored(c)
    assert len(recent) == 2
    assert recent.get(b.transaction_id) is None
    assert recent.get(a.transaction_id) is not None and recent.get(c.transaction_id) is not None


def test_forget_and_a_zero_bound() -> None:
    recent = RecentClaims()
    rec = claim_record("RC3").with_changes(row_version=1)
    recent.stored(rec)
    recent.forget(rec.transaction_id)
    assert recent.get(rec.transaction_id) is None
    none_kept = RecentClaims(max_claims=0)
    none_kept.stored(rec)
    assert len(none_kept) == 0
    with pytest.raises(ValueError):
        RecentClaims(max_claims=-1)


def test_a_closed_claim_is_kept_apart_without_envelopes_or_version() -> None:
    recent = RecentClaims()
    rec = claim_record("RC4").with_changes(row_version=7)
    recent.stored(rec)
    decided = rec.with_changes(state=State.APPROVED, decision_envelope="d.e.c.i.s", row_version=8)
    recent.stored(decided)
    assert recent.get(rec.transaction_id) is None and len(recent) == 0
    closed = recent.closed(rec.transaction_id)
    assert closed is not None and closed.state == State.APPROVED
    assert (closed.envelope, closed.decision_envelope, closed.row_version) == ("", "", 0)
    assert closed.insurer_code == rec.insurer_code and closed.delivery_mode == rec.delivery_mode
    # Open again (an operator's redrive): an open claim, no longer a closed one.
    recent.stored(rec.with_changes(state=State.DELIVERED, row_version=9))
    assert recent.closed(rec.transaction_id) is None and recent.get(rec.transaction_id) is not None
    recent.stored(decided.with_changes(row_version=10))
    recent.forget(rec.transaction_id)
    assert recent.closed(rec.transaction_id) is None
    recent.stored(decided.with_changes(row_version=11))
    recent.stored(decided.with_changes(row_version=0))  # no version: read next time
    assert recent.closed(rec.transaction_id) is None


def test_closed_claims_have_their_own_bound() -> None:
    recent = RecentClaims(max_claims=1, max_closed=2)
    closed = [claim_record(r).with_changes(state=State.DENIED, row_version=1) for r in ("RCD", "RCE", "RCF")]
    still_open = claim_record("RCG").with_changes(row_version=1)
    recent.stored(still_open)
    for rec in closed:
        recent.stored(rec)
    assert recent.closed(closed[0].transaction_id) is None
    assert all(recent.closed(rec.transaction_id) is not None for rec in closed[1:])
    assert recent.get(still_open.transaction_id) is not None  # closed ones take no open one's place
    with pytest.raises(ValueError):
        RecentClaims(max_closed=-1)
