"""The hub keeps a claim's envelope (ciphertext of patient data) only while a
delivery may still send it: the router drops it once the claim is decided,
cancelled or paid, the adapter once the insurer took it; sizes and hashes stay.
Real PostgreSQL; housekeeping's backfill of rows stored before the change too."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from iclaim_hub.common.backfill import BackfillTask
from iclaim_hub.common.db import apply_migrations, create_pool
from services.claim_router import store as router_store
from services.claim_router.domain import DELIVERY_EXPIRED, ENVELOPE_SPENT_STATES, State
from services.claim_router.model import ClaimRecord
from services.claim_router.store import PgClaimStore
from services.insurer_adapter import store as adapter_store
from services.insurer_adapter.model import Added, Lease, NewDelivery
from services.insurer_adapter.store import PgAdapterStore
from tests.support.router_records import claim_record

# Past the TOAST threshold, as a real claim's.
ENVELOPE = "h.k.i.c.t" * 900


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=4)
    yield p
    await p.close()


async def _router(pool: asyncpg.Pool) -> PgClaimStore:
    s = PgClaimStore(pool)
    await s.migrate()
    return s


def _claim(ref: str, mode: str = "grpc") -> ClaimRecord:
    return claim_record(ref, mode).with_changes(envelope=ENVELOPE, envelope_bytes=len(ENVELOPE))


async def _stored_envelope(pool: asyncpg.Pool, txid: str) -> str:
    return str(await pool.fetchval("SELECT envelope FROM router.claims WHERE transaction_id = $1", txid))


async def _move(s: PgClaimStore, txid: str, state: State, reason: str = "") -> ClaimRecord:
    moved = await s.transition(
        txid, lambda cur: (cur.with_changes(state=state, status_reason=reason), [("audit", b"x")])
    )
    assert moved is not None and moved.state == state
    return moved


# --- the router ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(ENVELOPE_SPENT_STATES), ids=lambda s: s.name)
async def test_the_router_drops_the_envelope_once_spent_and_keeps_its_size(
    pool: asyncpg.Pool, state: State
) -> None:
    s = await _router(pool)
    rec, _ = await s.insert(_claim(f"SPENT{int(state)}"), [])
    assert await _stored_envelope(pool, rec.transaction_id) == ENVELOPE
    await _move(s, rec.transaction_id, state)

    assert await _stored_envelope(pool, rec.transaction_id) == ""
    read = await s.get(rec.transaction_id)
    # The audit entry of a later change reports the claim's size from this.
    assert read is not None and read.envelope_bytes == len(ENVELOPE)
    assert read.envelope_sha256 == rec.envelope_sha256  # what a resubmission is compared with


async def test_open_and_expired_claims_keep_their_envelope(pool: asyncpg.Pool) -> None:
    """Still to be sent: an open claim (its push or pull not done), one under
    review (not an end), and an expired delivery, which an operator's redrive
    makes RECEIVED again: the poller then hands it off from the router's row."""
    s = await _router(pool)
    kept = []
    for n, state in enumerate((State.RECEIVED, State.DELIVERED, State.PENDING_REVIEW)):
        rec, _ = await s.insert(_claim(f"OPEN{n}"), [])
        if state != State.RECEIVED:
            await _move(s, rec.transaction_id, state)
        kept.append(rec.transaction_id)
    expired, _ = await s.insert(_claim("EXPIRED"), [])
    await _move(s, expired.transaction_id, State.FAILED, DELIVERY_EXPIRED)
    for txid in kept:
        assert await _stored_envelope(pool, txid) == ENVELOPE

    await _move(s, expired.transaction_id, State.RECEIVED)  # redriven
    # Due at once (the insert's hand-off lease aside), as the poller finds it.
    await pool.execute(
        "UPDATE router.claims SET next_attempt_at = now() - interval '1 second' WHERE transaction_id = $1",
        expired.transaction_id,
    )
    leased = [r for r in await s.lease_push(100, 30.0) if r.transaction_id == expired.transaction_id]
    assert [r.envelope for r in leased] == [ENVELOPE]


async def test_a_claim_paid_after_approval_still_reports_its_size(pool: asyncpg.Pool) -> None:
    s = await _router(pool)
    rec, _ = await s.insert(_claim("PAID1"), [])
    await _move(s, rec.transaction_id, State.APPROVED)
    paid = await _move(s, rec.transaction_id, State.PAID)
    assert paid.envelope_bytes == len(ENVELOPE)
    assert await _stored_envelope(pool, rec.transaction_id) == ""


async def _migrated_before(
    pool: asyncpg.Pool, schema: str, migrations: Path, first_new: str, tmp: Path
) -> None:
    """`schema` as a release before migration `first_new` left it."""
    before = tmp / schema
    before.mkdir()
    for path in sorted(migrations.glob("*.sql")):
        if path.name < first_new:
            shutil.copy(path, before / path.name)
    await apply_migrations(pool, schema, before)


async def test_the_router_backfill_drops_what_finished_claims_held(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Rows stored by a router before migration 0006: the migrations leave them
    (one UPDATE over a large table would outlast start-up); housekeeping's
    backfill then blanks finished ones, keeping their size, a batch at a time,
    and leaves open ones as they were."""
    await _migrated_before(pool, router_store.SCHEMA, router_store.MIGRATIONS, "0006", tmp_path)
    columns = (
        "transaction_id, hospital_code, insurer_code, claim_ref, state, billed_amount_satang,"
        " envelope, envelope_sha256, delivery_mode"
    )
    states = [s for s in State if s != State.UNSPECIFIED]
    for n, state in enumerate(states):
        await pool.execute(
            f"INSERT INTO router.claims ({columns}) VALUES ($1, '10670', 'AIA', $2, $3, 100, $4, $5, 'grpc')",
            f"txn_old{n:02d}",
            f"OLD{n}",
            int(state),
            ENVELOPE,
            "0" * 64,
        )

    s = await _router(pool)  # applies 0006 and what follows
    for n in range(len(states)):
        assert await _stored_envelope(pool, f"txn_old{n:02d}") == ENVELOPE

    task = BackfillTask(pool, router_store.SPENT_ENVELOPES, batch=3)
    changed = await _walked(pool, task)

    spent = [state in ENVELOPE_SPENT_STATES for state in states]
    assert changed == sum(spent) > 0
    for n, state in enumerate(states):
        assert await _stored_envelope(pool, f"txn_old{n:02d}") == ("" if spent[n] else ENVELOPE), state.name
        read = await s.get(f"txn_old{n:02d}")
        assert read is not None and read.envelope_bytes == len(ENVELOPE), state.name
    cursor = await pool.fetchrow(
        "SELECT after_key, done_at FROM router.backfills WHERE name = $1", router_store.SPENT_ENVELOPES.name
    )
    assert cursor["after_key"] == f"txn_old{len(states) - 1:02d}" and cursor["done_at"] is not None


async def _walked(pool: asyncpg.Pool, task: BackfillTask) -> float:
    """Runs `task` as a service does, until its backfill is done; the rows it changed."""
    name = task.backfill.name
    before = REGISTRY.get_sample_value("iclaim_backfill_rows_total", {"backfill": name}) or 0.0
    task.start()
    try:
        for _ in range(500):
            done = await pool.fetchval(
                f"SELECT done_at IS NOT NULL FROM {task.backfill.schema}.backfills WHERE name = $1", name
            )
            if done:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"backfill {name} not done")
    finally:
        await task.close()
    return (REGISTRY.get_sample_value("iclaim_backfill_rows_total", {"backfill": name}) or 0.0) - before


# --- the adapter ---------------------------------------------------------------------------


def _delivery(n: int) -> NewDelivery:
    return NewDelivery(
        transaction_id=f"txn_{n:028d}",
        insurer_code="AIA",
        hospital_code="10670",
        claim_ref=f"REF{n}",
        billed_amount_satang=100,
        envelope=ENVELOPE,
        submitted_at=datetime.now(UTC),
        envelope_sha256="a" * 64,
    )


async def _adapter(pool: asyncpg.Pool) -> PgAdapterStore:
    s = PgAdapterStore(pool)
    await s.migrate()
    return s


async def _held(pool: asyncpg.Pool) -> dict[str, tuple[str, str]]:
    rows = await pool.fetch("SELECT transaction_id, state, envelope FROM adapter.deliveries")
    return {r["transaction_id"]: (r["state"], r["envelope"]) for r in rows}


async def test_the_adapter_drops_the_envelope_of_a_taken_delivery(pool: asyncpg.Pool) -> None:
    s = await _adapter(pool)
    one, many, waiting = _delivery(1), [_delivery(2), _delivery(3)], _delivery(4)
    for d in (one, *many, waiting):
        added, _ = await s.add_delivery(d, 3600.0, Lease("worker", 30.0))
        assert added == Added.NEW
    now = datetime.now(UTC)
    assert await s.mark_taken(one.transaction_id, now, reported=True)
    await s.mark_taken_many([(d.transaction_id, now, False) for d in many])
    # Pushed before it was stored, taken: stored without it.
    pushed_first = _delivery(5)
    await s.add_taken_many([(pushed_first, now, True)], 3600.0)

    held = await _held(pool)
    for d in (one, *many, pushed_first):
        assert held[d.transaction_id] == ("taken", "")
    assert held[waiting.transaction_id] == ("waiting", ENVELOPE)  # still to be pushed
    # The router handing a taken claim off again is still a duplicate, not a conflict.
    again, _ = await s.add_delivery(one, 3600.0)
    assert again == Added.DUPLICATE
    other, _ = await s.add_delivery(replace(one, envelope_sha256="b" * 64), 3600.0)
    assert other == Added.CONFLICT


async def test_a_failed_delivery_keeps_its_envelope_for_a_redrive(pool: asyncpg.Pool) -> None:
    s = await _adapter(pool)
    d = _delivery(6)
    await s.add_failed_attempt(d, "refused", 0.0, 3600.0)
    await pool.execute(
        "UPDATE adapter.deliveries SET state = 'failed' WHERE transaction_id = $1", d.transaction_id
    )
    assert await s.redrive([d.transaction_id], 3600.0) == [d.transaction_id]
    assert (await _held(pool))[d.transaction_id] == ("waiting", ENVELOPE)


async def test_the_adapter_backfill_drops_what_taken_deliveries_held(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await _migrated_before(pool, adapter_store.SCHEMA, adapter_store.MIGRATIONS, "0004", tmp_path)
    for n, state in enumerate(("waiting", "taken", "failed", "taken")):
        await pool.execute(
            "INSERT INTO adapter.deliveries (transaction_id, insurer_code, hospital_code, claim_ref,"
            " billed_amount_satang, envelope, envelope_sha256, submitted_at, expires_at, state)"
            " VALUES ($1, 'AIA', '10670', $2, 100, $3, $4, now(), now() + interval '1 hour', $5)",
            f"txn_old{n}",
            f"OLD{n}",
            ENVELOPE,
            "a" * 64,
            state,
        )

    await _adapter(pool)  # 0004 changes no row: the backfill does
    assert all(envelope == ENVELOPE for _, envelope in (await _held(pool)).values())

    assert await _walked(pool, BackfillTask(pool, adapter_store.TAKEN_ENVELOPES, batch=2)) == 2
    assert await _held(pool) == {
        "txn_old0": ("waiting", ENVELOPE),
        "txn_old1": ("taken", ""),
        "txn_old2": ("failed", ENVELOPE),
        "txn_old3": ("taken", ""),
    }


async def test_a_release_before_that_finishes_a_claim_has_its_envelope_blanked(pool: asyncpg.Pool) -> None:
    """During a rolling upgrade a router or adapter of the release before may
    still write a finished claim or a taken delivery with its envelope, after
    the backfill walked past it: the migrations' triggers blank it in that write."""
    s = await _router(pool)
    (spent, _), (failed, _) = await s.insert(_claim("TRIG1"), []), await s.insert(_claim("TRIG2"), [])
    for rec, state in ((spent, State.APPROVED), (failed, State.FAILED)):
        # The old release's write: the state only.
        await pool.execute(
            "UPDATE router.claims SET state = $2 WHERE transaction_id = $1", rec.transaction_id, int(state)
        )
    assert await _stored_envelope(pool, spent.transaction_id) == ""
    assert await pool.fetchval(
        "SELECT envelope_bytes FROM router.claims WHERE transaction_id = $1", spent.transaction_id
    ) == len(ENVELOPE)
    assert await _stored_envelope(pool, failed.transaction_id) == ENVELOPE  # kept for a redrive

    a = await _adapter(pool)
    taken, failing = _delivery(7), _delivery(8)
    for d in (taken, failing):
        await a.add_delivery(d, 3600.0)
    for d, state in ((taken, "taken"), (failing, "failed")):
        await pool.execute(
            "UPDATE adapter.deliveries SET state = $2 WHERE transaction_id = $1", d.transaction_id, state
        )
    held = await _held(pool)
    assert held[taken.transaction_id] == ("taken", "")
    assert held[failing.transaction_id] == ("failed", ENVELOPE)
