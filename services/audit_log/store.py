"""PostgreSQL storage of the audit log (schema `audit`): SQL only.

Writes run as the role iclaim_audit_writer (SET LOCAL ROLE in each
transaction) when the login may assume it: that role has INSERT/SELECT on the
log tables and no DELETE; triggers refuse changes to everyone, and only
audit.expire_entries() (owned by iclaim_audit_expirer) removes entry data.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from iclaim.audit.entry import AuditEntry
from iclaim.audit.merkle import CompactRange, Node, root_nodes
from iclaim.audit.verifier import StoredLeaf
from iclaim_hub.common.db import apply_migrations
from iclaim_hub.common.fields import copy_columns
from services.audit_log.db_login import DbLogin
from services.audit_log.domain import (
    AppendOutcome,
    Hold,
    OffsetUpdate,
    Position,
    StoredCheckpoint,
    plan_append,
)

log = structlog.get_logger("audit_log.store")

SCHEMA = "audit"
MIGRATIONS = Path(__file__).parent / "migrations"
WRITER_ROLE = "iclaim_audit_writer"
_SET_WRITER_ROLE = "SET LOCAL ROLE iclaim_audit_writer"  # a role cannot be a bind parameter
_APPEND_LOCK = int.from_bytes(hashlib.sha256(b"iclaim.audit.append").digest()[:8], "big", signed=True)
_ENTRY_COLUMNS = (
    "leaf_index", "kind", "origin_principal", "source_address", "destination", "route",
    "occurred_at_us", "size_bytes", "duration_ms", "service_type", "outcome_code",
    "outcome_reason", "transaction_id", "envelope_sha256",
)  # fmt: skip
_SELECT_ENTRY = (
    "SELECT l.leaf_index, l.event_id, l.leaf_hash, (x.leaf_index IS NOT NULL) AS expired,"
    " d.kind, d.origin_principal, d.source_address, d.destination, d.route, d.occurred_at_us,"
    " d.size_bytes, d.duration_ms, d.service_type, d.outcome_code, d.outcome_reason,"
    " d.transaction_id, d.envelope_sha256"
    " FROM audit.leaves l LEFT JOIN audit.entry_data d ON d.leaf_index = l.leaf_index"
    " LEFT JOIN audit.expired x ON x.leaf_index = l.leaf_index"
)
_TREE_SIZE = "SELECT coalesce(max(leaf_index) + 1, 0) FROM audit.leaves"
# Owner of the schema (or, before it exists, may create it): may apply migrations.
_MAY_MIGRATE = (
    "SELECT CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE')"
    " ELSE pg_has_role(n.nspowner, 'MEMBER') END"
    " FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = 'audit'"
)
# A login that could switch the triggers off (or make itself one that can).
_PRIVILEGED = (
    "SELECT r.rolsuper OR r.rolcreaterole OR coalesce(pg_has_role(n.nspowner, 'MEMBER'), false)"
    " FROM pg_roles r LEFT JOIN pg_namespace n ON n.nspname = 'audit' WHERE r.rolname = session_user"
)


def _entry_of(row: Any) -> AuditEntry | None:
    if row["kind"] is None:
        return None
    return copy_columns(AuditEntry, row)


def _entry_row(index: int, e: AuditEntry) -> tuple[Any, ...]:
    """An entry_data row, in _ENTRY_COLUMNS order."""
    return (
        index, e.kind, e.origin_principal, e.source_address, e.destination, e.route,
        e.occurred_at_us, e.size_bytes, e.duration_ms, e.service_type, e.outcome_code,
        e.outcome_reason, e.transaction_id, e.envelope_sha256,
    )  # fmt: skip


def _leaf_of(row: Any) -> StoredLeaf:
    return StoredLeaf(
        leaf_index=row["leaf_index"],
        event_id=row["event_id"],
        leaf_hash=bytes(row["leaf_hash"]),
        entry=_entry_of(row),
        expired=row["expired"],
    )


def _checkpoint_of(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(row["tree_size"], bytes(row["root_hash"]), row["signed_at"], row["note"])


def _hold_of(row: Any) -> Hold:
    return Hold(
        row["hold_id"], row["scope"], row["value"], row["reference"], row["placed_at"], row["released_at"]
    )


async def _get_nodes(conn: Any, nodes: Sequence[Node]) -> dict[Node, bytes]:
    leaves = [i for lvl, i in nodes if lvl == 0]
    inner = [(lvl, i) for lvl, i in nodes if lvl > 0]
    out: dict[Node, bytes] = {}
    if leaves:
        for r in await conn.fetch(
            "SELECT leaf_index, leaf_hash FROM audit.leaves WHERE leaf_index = ANY($1::bigint[])",
            leaves,
        ):
            out[(0, r["leaf_index"])] = bytes(r["leaf_hash"])
    if inner:
        for r in await conn.fetch(
            "SELECT n.level, n.idx, n.hash FROM audit.nodes n"
            " JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, idx)"
            " ON n.level = w.level AND n.idx = w.idx",
            [lvl for lvl, _ in inner],
            [i for _, i in inner],
        ):
            out[(r["level"], r["idx"])] = bytes(r["hash"])
    missing = [n for n in nodes if n not in out]
    if missing:
        raise LookupError(f"tree nodes missing: {missing[:4]}")
    return out


class AuditStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._writer_role = False
        # The tree's right border after our last append: saves reading it again
        # while this process is the only writer (checked against the size).
        self._tree: CompactRange | None = None
        # One writer per process; the advisory lock serialises processes.
        self._write_lock = asyncio.Lock()

    @property
    def writer_role_enforced(self) -> bool:
        return self._writer_role

    async def migrate(self) -> DbLogin:
        """Applies the migrations if this login may (owner, superuser), else
        finds those missing; then whether writes can run as the writer role."""
        if await self._pool.fetchval(_MAY_MIGRATE):
            await apply_migrations(self._pool, SCHEMA, MIGRATIONS)
            pending: tuple[str, ...] = ()
        else:
            pending = await self._pending_migrations()
        self._writer_role = not pending and await self._can_become_writer()
        if not self._writer_role:
            log.warning("audit_writer_role_not_used", role=WRITER_ROLE)
        return DbLogin(bool(await self._pool.fetchval(_PRIVILEGED)), self._writer_role, pending)

    async def _pending_migrations(self) -> tuple[str, ...]:
        try:
            rows = await self._pool.fetch("SELECT version FROM audit.schema_migrations")
        except (asyncpg.UndefinedTableError, asyncpg.InsufficientPrivilegeError):
            rows = []  # no schema yet, or from before the writer could read it
        done = {r["version"] for r in rows}
        return tuple(p.name for p in sorted(MIGRATIONS.glob("*.sql")) if p.name not in done)

    async def _can_become_writer(self) -> bool:
        # Tried rather than looked up: membership need not carry SET (PostgreSQL 16+).
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(_SET_WRITER_ROLE)
            except (asyncpg.InsufficientPrivilegeError, asyncpg.InvalidParameterValueError):
                return False  # not a member, or no such role
        return True

    async def _begin_write(self, conn: asyncpg.Connection) -> None:
        # Durable before acknowledged, whatever the server default says.
        await conn.execute("SET LOCAL synchronous_commit = on")
        if self._writer_role:
            await conn.execute(_SET_WRITER_ROLE)

    # --- tree ----------------------------------------------------------------
    async def get_nodes(self, nodes: Sequence[Node]) -> dict[Node, bytes]:
        return await _get_nodes(self._pool, nodes)

    async def tree_size(self) -> int:
        return int(await self._pool.fetchval(_TREE_SIZE))

    # --- append --------------------------------------------------------------
    async def append(
        self, entries: Sequence[AuditEntry], offset: OffsetUpdate | None = None
    ) -> AppendOutcome:
        """Appends entries not yet in the log (by event id) in the given order,
        with their tree nodes and the ingest offset, in one transaction."""
        async with self._write_lock:
            try:
                return await self._append_locked(entries, offset)
            except BaseException:
                self._tree = None  # reload from the database next time
                raise

    async def _append_locked(
        self, entries: Sequence[AuditEntry], offset: OffsetUpdate | None
    ) -> AppendOutcome:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._begin_write(conn)
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _APPEND_LOCK)
            size = int(await conn.fetchval(_TREE_SIZE))
            if self._tree is None or self._tree.size != size:
                self._tree = CompactRange.from_nodes(size, await _get_nodes(conn, root_nodes(size)))
            known = {
                r["event_id"]
                for r in await conn.fetch(
                    "SELECT event_id FROM audit.leaves WHERE event_id = ANY($1::text[])",
                    list({e.event_id for e in entries}),
                )
            }
            plan = plan_append(self._tree, entries, known)
            if plan.leaves:
                await conn.copy_records_to_table(
                    "leaves",
                    schema_name=SCHEMA,
                    records=[(i, e.event_id, h) for i, e, h in plan.leaves],
                    columns=("leaf_index", "event_id", "leaf_hash"),
                )
                await conn.copy_records_to_table(
                    "entry_data",
                    schema_name=SCHEMA,
                    records=[_entry_row(i, e) for i, e, _ in plan.leaves],
                    columns=_ENTRY_COLUMNS,
                )
            if plan.nodes:
                await conn.copy_records_to_table(
                    "nodes", schema_name=SCHEMA, records=plan.nodes, columns=("level", "idx", "hash")
                )
            if offset is not None:
                await conn.execute(
                    "INSERT INTO audit.ingest_offsets (source, file_id, byte_offset)"
                    " VALUES ($1, $2, $3) ON CONFLICT (source) DO UPDATE"
                    " SET file_id = excluded.file_id, byte_offset = excluded.byte_offset,"
                    " updated_at = now()",
                    offset.source,
                    offset.position.file_id,
                    offset.position.byte_offset,
                )
        self._tree = plan.tree
        appended = {e.event_id: i for i, e, _ in plan.leaves}
        return AppendOutcome(appended, len(entries) - len(appended), plan.tree.size)

    async def ingest_offset(self, source: str) -> Position | None:
        row = await self._pool.fetchrow(
            "SELECT file_id, byte_offset FROM audit.ingest_offsets WHERE source = $1", source
        )
        return None if row is None else Position(row["file_id"], row["byte_offset"])

    # --- reads ---------------------------------------------------------------
    async def list_entries(self, start: int, limit: int, principal: str | None) -> list[StoredLeaf]:
        if principal:
            # Two index range scans merged: the principal as origin or as destination.
            rows = await self._pool.fetch(
                _SELECT_ENTRY + " WHERE l.leaf_index IN ("
                " (SELECT leaf_index FROM audit.entry_data WHERE origin_principal = $3"
                "   AND leaf_index >= $1 ORDER BY leaf_index LIMIT $2)"
                " UNION (SELECT leaf_index FROM audit.entry_data WHERE destination = $3"
                "   AND leaf_index >= $1 ORDER BY leaf_index LIMIT $2))"
                " ORDER BY l.leaf_index LIMIT $2",
                start,
                limit,
                principal,
            )
        else:
            rows = await self._pool.fetch(
                _SELECT_ENTRY + " WHERE l.leaf_index >= $1 ORDER BY l.leaf_index LIMIT $2",
                start,
                limit,
            )
        return [_leaf_of(r) for r in rows]

    async def entries_by_transaction(
        self, transaction_id: str, principal: str | None, limit: int
    ) -> list[StoredLeaf]:
        rows = await self._pool.fetch(
            _SELECT_ENTRY + " WHERE d.transaction_id = $1"
            " AND ($2::text IS NULL OR d.origin_principal = $2 OR d.destination = $2)"
            " ORDER BY l.leaf_index LIMIT $3",
            transaction_id,
            principal,
            limit,
        )
        return [_leaf_of(r) for r in rows]

    async def entry(self, leaf_index: int) -> StoredLeaf | None:
        row = await self._pool.fetchrow(_SELECT_ENTRY + " WHERE l.leaf_index = $1", leaf_index)
        return None if row is None else _leaf_of(row)

    async def iter_leaves(self, batch: int = 5000) -> AsyncIterator[StoredLeaf]:
        """Every leaf in index order (keyset pagination; constant memory)."""
        after = -1
        while True:
            rows = await self._pool.fetch(
                _SELECT_ENTRY + " WHERE l.leaf_index > $1 ORDER BY l.leaf_index LIMIT $2",
                after,
                batch,
            )
            for r in rows:
                yield _leaf_of(r)
            if len(rows) < batch:
                return
            after = rows[-1]["leaf_index"]

    # --- checkpoints and key -------------------------------------------------
    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = await self._pool.fetchrow("SELECT * FROM audit.checkpoints ORDER BY tree_size DESC LIMIT 1")
        return None if row is None else _checkpoint_of(row)

    async def checkpoint_notes(self) -> list[str]:
        rows = await self._pool.fetch("SELECT note FROM audit.checkpoints ORDER BY tree_size")
        return [r["note"] for r in rows]

    async def add_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        """Stores `cp` unless one of its size exists; returns the stored one."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._begin_write(conn)
            await conn.execute(
                "INSERT INTO audit.checkpoints (tree_size, root_hash, signed_at, note)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING",
                cp.tree_size,
                cp.root_hash,
                cp.signed_at,
                cp.note,
            )
            row = await conn.fetchrow("SELECT * FROM audit.checkpoints WHERE tree_size = $1", cp.tree_size)
        return _checkpoint_of(row)

    async def signing_key(self, name: str) -> tuple[bytes, bytes] | None:
        """(public key, sealed private key)."""
        row = await self._pool.fetchrow(
            "SELECT public_key, private_sealed FROM audit.signing_keys WHERE key_name = $1", name
        )
        return None if row is None else (bytes(row["public_key"]), bytes(row["private_sealed"]))

    async def public_key(self, name: str) -> bytes | None:
        value = await self._pool.fetchval(
            "SELECT public_key FROM audit.signing_keys WHERE key_name = $1", name
        )
        return None if value is None else bytes(value)

    async def add_signing_key(self, name: str, public: bytes, sealed: bytes) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._begin_write(conn)
            await conn.execute(
                "INSERT INTO audit.signing_keys (key_name, public_key, private_sealed)"
                " VALUES ($1, $2, $3) ON CONFLICT (key_name) DO NOTHING",
                name,
                public,
                sealed,
            )

    # --- retention -----------------------------------------------------------
    async def expire(self, retention_days: int, limit: int) -> int:
        """Expires at most `limit` entries older than `retention_days` and not held."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._begin_write(conn)
            return int(await conn.fetchval("SELECT audit.expire_entries($1, $2)", retention_days, limit))

    async def place_hold(self, scope: str, value: str, reference: str) -> Hold:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._begin_write(conn)
            row = await conn.fetchrow(
                "INSERT INTO audit.legal_holds (scope, value, reference) VALUES ($1, $2, $3) RETURNING *",
                scope,
                value,
                reference,
            )
        return _hold_of(row)

    async def release_hold(self, hold_id: int) -> Hold | None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._begin_write(conn)
            row = await conn.fetchrow(
                "UPDATE audit.legal_holds SET released_at = coalesce(released_at, now())"
                " WHERE hold_id = $1 RETURNING *",
                hold_id,
            )
        return None if row is None else _hold_of(row)

    async def holds(self, include_released: bool) -> list[Hold]:
        rows = await self._pool.fetch(
            "SELECT * FROM audit.legal_holds WHERE $1 OR released_at IS NULL ORDER BY hold_id",
            include_released,
        )
        return [_hold_of(r) for r in rows]
