"""PostgreSQL record of the nonce-store marker generation (schema `gateway`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from iclaim_hub.common.db import apply_migrations

SCHEMA = "gateway"
# Inside Envoy's 5 s ext_authz deadline (a resync makes a few of these calls).
_TIMEOUT_S = 1.5
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class MarkerState:
    generation: str
    recovered_at: float | None  # Unix seconds


def _state(row: asyncpg.Record) -> MarkerState:
    at = row["recovered_at"]
    return MarkerState(row["generation"], at.timestamp() if at is not None else None)


class PgMarkerLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    async def current(self) -> MarkerState | None:
        row = await self._pool.fetchrow(
            "SELECT generation, recovered_at FROM gateway.nonce_store_marker", timeout=_TIMEOUT_S
        )
        return _state(row) if row is not None else None

    async def create_first(self, generation: str) -> MarkerState:
        """Records the first generation; if a peer won the race, returns its row."""
        await self._pool.execute(
            "INSERT INTO gateway.nonce_store_marker (generation) VALUES ($1)"
            " ON CONFLICT (singleton) DO NOTHING",
            generation,
            timeout=_TIMEOUT_S,
        )
        state = await self.current()
        assert state is not None
        return state

    async def record_loss(self, expected: str, generation: str, recovered_at: float) -> MarkerState:
        """Compare-and-set from `expected`; returns whichever state is current."""
        at = datetime.fromtimestamp(recovered_at, UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE gateway.nonce_store_marker SET generation = $2, recovered_at = $3,"
                " updated_at = now() WHERE generation = $1 RETURNING generation, recovered_at",
                expected,
                generation,
                at,
                timeout=_TIMEOUT_S,
            )
            if row is not None:
                await conn.execute(
                    "INSERT INTO gateway.nonce_store_losses"
                    " (generation, previous_generation, recovered_at) VALUES ($1, $2, $3)",
                    generation,
                    expected,
                    at,
                    timeout=_TIMEOUT_S,
                )
                return _state(row)
        state = await self.current()
        assert state is not None
        return state
