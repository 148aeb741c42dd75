"""A claim as the router stores it, and a pool over the router's migrated
schema, for tests of the router's store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg

from iclaim_hub.common.db import create_pool

from services.claim_router.domain import State
from services.claim_router.model import ClaimRecord
from services.claim_router.store import PgClaimStore


@contextlib.asynccontextmanager
async def router_pool(database_url: str, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `database_url` with the router's schema migrated."""
    pool = await create_pool(database_url, max_size=max_size)
    try:
        await PgClaimStore(pool).migrate()
        yield pool
    finally:
        await pool.close()


def claim_record(ref: str, mode: str = "grpc") -> ClaimRecord:
    now = datetime.now(UTC)
    return ClaimRecord(
        transaction_id=f"txn_{ref.lower():0>28}",
        hospital_code="10670",
        insurer_code="AIA",
        claim_ref=ref,
        state=State.RECEIVED,
        billed_amount_satang=100,
        approved_amount_satang=0,
        envelope="e",
        envelope_bytes=1,
        envelope_sha256="0" * 64,
        decision_envelope="",
        status_reason="",
        delivery_mode=mode,
        submitted_at=now,
        decided_at=None,
        updated_at=now,
    )
