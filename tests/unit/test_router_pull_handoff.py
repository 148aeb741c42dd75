"""The waiting polls a submission may hand its pull claim to
(services/claim_router/pull_handoff.py): who may be reserved, and that a claim
is handed only to a poll that will answer with it."""

from __future__ import annotations

import asyncio

from services.claim_router.pull_handoff import PullHandOff
from tests.support.router_records import claim_record

CLAIM = claim_record("HANDED01", "pull")


async def test_only_a_poll_in_its_wait_is_reserved_and_only_once() -> None:
    polls = PullHandOff()
    assert polls.reserve("AIA") is None
    ready = asyncio.Event()
    with polls.waiting("AIA", ready) as taker:
        assert polls.reserve("AIA") is None  # not waiting yet (leasing, say)
        taker.open()
        assert polls.reserve("TLI") is None  # another insurer's
        assert polls.reserve("AIA") is taker
        assert polls.reserve("AIA") is None  # reserved already
        assert taker.hand(CLAIM) and ready.is_set()
        assert await taker.close() == [CLAIM]
    assert polls.reserve("AIA") is None


async def test_the_longest_waiting_poll_first() -> None:
    polls = PullHandOff()
    with polls.waiting("AIA", asyncio.Event()) as first, polls.waiting("AIA", asyncio.Event()) as second:
        first.open()
        second.open()
        assert polls.reserve("AIA") is first
        assert polls.reserve("AIA") is second


async def test_a_wait_that_ends_while_reserved_waits_for_the_hand_off() -> None:
    polls = PullHandOff()
    with polls.waiting("AIA", asyncio.Event()) as taker:
        taker.open()
        reserved = polls.reserve("AIA")
        assert reserved is taker

        async def insert_then_hand() -> bool:
            await asyncio.sleep(0.1)
            return taker.hand(CLAIM)

        handing = asyncio.create_task(insert_then_hand())
        assert await taker.close() == [CLAIM]
        assert await handing


async def test_a_reservation_that_comes_to_nothing_frees_the_poll() -> None:
    polls = PullHandOff()
    with polls.waiting("AIA", asyncio.Event()) as taker:
        taker.open()
        assert polls.reserve("AIA") is taker
        taker.release()  # a resubmission: nothing stored
        assert polls.reserve("AIA") is taker  # free again while it waits
        taker.release()
        assert await asyncio.wait_for(taker.close(), 1) == []


async def test_a_late_hand_off_finds_the_poll_gone() -> None:
    polls = PullHandOff()
    with polls.waiting("AIA", asyncio.Event()) as taker:
        taker.open()
        assert polls.reserve("AIA") is taker
        assert await taker.close(wait_s=0.05) == []  # gave up on the reservation
        assert not taker.hand(CLAIM)  # the claim waits for its lease to end
        taker.open()
        gone = polls.reserve("AIA")
        assert gone is taker
    # The poll ended (answered, or its caller cancelled) before the hand-off.
    assert not gone.hand(CLAIM) and gone.handed == []
