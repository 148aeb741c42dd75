"""An insurer's decision starts from the claim as this replica stored it
(no read), and stays right when another replica changed the claim since: a
write refused by the row version, and an answer of "no change" or a refusal
made on the old version, stand only once decided on the claim as read.
Real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from iclaim.errors import FailedPrecondition
from iclaim_hub.common.db import create_pool
from services.claim_router.domain import State, new_transaction_id
from services.claim_router.model import ClaimRecord, Event
from services.claim_router.store import PgClaimStore
from services.claim_router.usecases import ClaimRouter, DecisionRequest
from tests.support.router_records import claim_record


class CountingStore(PgClaimStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.reads = 0

    async def get(self, transaction_id: str) -> ClaimRecord | None:
        self.reads += 1
        return await super().get(transaction_id)


@pytest.fixture
async def parts(database_url: str) -> AsyncIterator[tuple[CountingStore, PgClaimStore]]:
    pool = await create_pool(database_url, max_size=4)
    here = CountingStore(pool)
    await here.migrate()
    yield here, PgClaimStore(pool)  # this replica's store, and another replica's
    await pool.close()


def _claim(ref: str) -> ClaimRecord:
    return claim_record(ref).with_changes(transaction_id=new_transaction_id())


def _review(rec: ClaimRecord) -> DecisionRequest:
    return DecisionRequest(
        transaction_id=rec.transaction_id,
        insurer_code=rec.insurer_code,
        state=int(State.PENDING_REVIEW),
        approved_amount_satang=0,
        decision_envelope="",
        reason_code="",
    )


def _router(store: PgClaimStore) -> ClaimRouter:
    return ClaimRouter(store, directory=None, push=None, changes=None)  # type: ignore[arg-type]


def _to(state: State, **changes: object) -> object:
    def mutate(cur: ClaimRecord) -> tuple[ClaimRecord | None, Sequence[Event]]:
        return cur.with_changes(state=state, **changes), []

    return mutate


async def test_a_decision_on_a_claim_stored_here_reads_nothing(
    parts: tuple[CountingStore, PgClaimStore],
) -> None:
    here, elsewhere = parts
    stored, _ = await here.insert(_claim("RD1"), [])
    decided = await _router(here).post_decision(_review(stored))
    assert here.reads == 0
    assert decided.state == State.PENDING_REVIEW
    assert decided == await elsewhere.get(stored.transaction_id)


async def test_a_claim_changed_elsewhere_is_read_and_decided_on_as_it_is(
    parts: tuple[CountingStore, PgClaimStore],
) -> None:
    here, elsewhere = parts
    stored, _ = await here.insert(_claim("RD2"), [])
    await elsewhere.transition(stored.transaction_id, _to(State.DELIVERED))  # a new row version
    decided = await _router(here).post_decision(_review(stored))
    assert here.reads == 1  # the write on the old version was refused; decided on the claim as read
    assert decided.state == State.PENDING_REVIEW
    assert decided == await elsewhere.get(stored.transaction_id)


async def test_no_change_or_a_refusal_on_an_old_version_is_checked_on_the_claim_as_read(
    parts: tuple[CountingStore, PgClaimStore],
) -> None:
    here, elsewhere = parts
    router = _router(here)
    stored, _ = await here.insert(_claim("RD3"), [])
    await router.post_decision(_review(stored))  # this replica now holds it PENDING_REVIEW
    assert here.reads == 0
    await elsewhere.transition(stored.transaction_id, _to(State.CANCELLED))
    # Held here, the same decision again looks like no change; as stored, the
    # claim is cancelled: a decision conflicts.
    with pytest.raises(FailedPrecondition) as refused:
        await router.post_decision(_review(stored))
    assert refused.value.reason == "DECISION_CONFLICT"
    assert here.reads == 1
