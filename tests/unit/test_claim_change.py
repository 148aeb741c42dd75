"""A waiter's record in hand (the claim as this replica wrote it) lasts only
while announcements agree with it."""

from __future__ import annotations

from services.claim_router.domain import State
from services.claim_router.model import ClaimChange
from services.claim_router.watch import ChangeHub
from tests.support.router_records import claim_record


def test_written_here_sets_the_state_and_the_record() -> None:
    change = ClaimChange()
    rec = claim_record("CC1").with_changes(state=State.APPROVED)
    change.written_here(rec)
    assert change.is_set() and change.state == State.APPROVED and change.record is rec


def test_its_own_announcement_keeps_the_record() -> None:
    change = ClaimChange()
    rec = claim_record("CC2").with_changes(state=State.DENIED)
    change.written_here(rec)
    change.clear()
    change.announce(State.DENIED)
    assert change.is_set() and change.record is rec


def test_another_state_drops_it() -> None:
    change = ClaimChange()
    change.written_here(claim_record("CC3").with_changes(state=State.APPROVED))
    change.announce(State.PAID)
    assert change.state == State.PAID and change.record is None


def test_an_unsaid_state_keeps_it_for_the_waiter_to_check() -> None:
    # The previous release's channel (and a reconnect) say nothing: the waiter
    # reads the state and uses the record only if they agree.
    change = ClaimChange()
    rec = claim_record("CC7").with_changes(state=State.APPROVED)
    change.written_here(rec)
    change.announce(None)
    assert change.state is None and change.record is rec


def test_a_write_here_hands_its_record_to_the_claims_waiters_only() -> None:
    hub = ChangeHub("postgresql://unused")  # no connection: only the local hand-off
    rec = claim_record("CC4").with_changes(state=State.APPROVED)
    other = claim_record("CC5")
    with hub.claim_changes(rec.transaction_id) as mine, hub.claim_changes(other.transaction_id) as theirs:
        with hub.writing([rec.transaction_id]) as hand_off:
            assert mine.local_writes == 1 and theirs.local_writes == 0
            hand_off(rec)
        assert mine.record is rec and mine.state == State.APPROVED and mine.local_writes == 0
        assert not theirs.is_set() and theirs.record is None


def test_a_write_here_that_stored_nothing_wakes_the_waiter_to_read() -> None:
    hub = ChangeHub("postgresql://unused")
    rec = claim_record("CC6")
    with hub.claim_changes(rec.transaction_id) as change:
        with hub.writing([rec.transaction_id]):
            pass  # another writer changed the row first: nothing stored here
        assert change.is_set() and change.record is None and change.local_writes == 0
