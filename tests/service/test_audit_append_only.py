"""The append-only guarantee cannot be switched off by the service's own login:
no session setting lets a DELETE through, expiry (a SECURITY DEFINER function
owned by a role the service cannot become) is the only way entry data goes, signing
keys, legal holds and ingest offsets are guarded too, and the service refuses a
login that cannot act as the writer role unless the dev setting allows it."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from iclaim.audit.entry import AuditEntry
from iclaim_hub.common.config import ConfigError
from iclaim_hub.common.db import create_pool
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from iclaim_hub.internal.v1 import audit_log_pb2_grpc as pb_grpc
from services.audit_log.domain import OffsetUpdate, Position
from services.audit_log.migrate import migrate
from services.audit_log.server import Config, build_server
from services.audit_log.store import AuditStore
from tests.support.audit import audit_config, audit_server, event
from tests.support.databases import PG_ADMIN_URL

WRITER = "iclaim_audit_writer"
EXPIRER = "iclaim_audit_expirer"
SWITCH = "SET LOCAL iclaim_audit.expiring = 'on'"  # what 0001's trigger trusted


def _as(database_url: str, role: str) -> str:
    parts = urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


async def _ensure_role(admin: asyncpg.Connection, role: str) -> None:
    # Roles are cluster-wide; a migration elsewhere may be creating it right now.
    await admin.execute(
        "DO $$ BEGIN"
        f" IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN"
        f" CREATE ROLE {role} NOLOGIN; END IF;"
        " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    )


@asynccontextmanager
async def _login_role(database_url: str, *grants: str) -> AsyncIterator[str]:
    """A throw-away login role (trust auth, as every test role here), given
    `grants` (SQL run in the scratch database, `{r}` = the role)."""
    role = f"t_audit_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    db = await asyncpg.connect(database_url)
    try:
        for r in (WRITER, EXPIRER):
            await _ensure_role(admin, r)
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        for sql in grants:
            await db.execute(sql.format(r=role, db=urlsplit(database_url).path.lstrip("/")))
        yield role
    finally:
        await db.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await db.execute(f"DROP OWNED BY {role}")
        await db.close()
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def _refused(
    conn: asyncpg.Connection, sql: str, match: str, *, role: str | None = None, switch: bool = True
) -> None:
    with pytest.raises(asyncpg.PostgresError, match=match):
        async with conn.transaction():
            if role:
                await conn.execute(f"SET LOCAL ROLE {role}")
            if switch:
                await conn.execute(SWITCH)
            await conn.execute(sql)


def _fields(i: int) -> dict[str, object]:
    return {
        "event_id": f"ev-{i}", "kind": "CLAIM_STATE_CHANGE", "origin_principal": "10670",
        "source_address": "10.0.0.7", "destination": "AIA", "route": "/iclaim.v1.ClaimService/SubmitClaim",
        "occurred_at_us": int(time.time() * 1e6), "size_bytes": 1, "duration_ms": 1,
        "service_type": "claim_router", "outcome_code": "OK", "outcome_reason": "CLAIM_STATE_RECEIVED",
        "transaction_id": "", "envelope_sha256": "",
    }  # fmt: skip


async def _expired_flags(stub: pb_grpc.AuditLogServiceStub) -> list[bool]:
    return [e.expired for e in (await stub.ListEntries(pb.ListEntriesRequest())).entries]


async def _seed(database_url: str) -> None:
    async with audit_server(database_url) as (running, stub):
        await stub.Append(pb.AppendRequest(events=[event(i) for i in range(3)]))
        await running.store.append([], OffsetUpdate("envoy-access-log", Position("1:2:ab", 10)))


async def test_no_session_setting_lets_a_delete_through(database_url: str) -> None:
    await _seed(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        # The writer role (what the service writes as) and the superuser
        # without replica mode (the owner's rights): both refused.
        await _refused(conn, "DELETE FROM audit.entry_data", "permission denied", role=WRITER)
        await _refused(conn, "DELETE FROM audit.entry_data", "append-only")
        await _refused(conn, "DELETE FROM audit.entry_data WHERE leaf_index = 1", "append-only")
        await _refused(conn, "UPDATE audit.entry_data SET route = '/x'", "append-only")
        await _refused(conn, "TRUNCATE audit.entry_data", "append-only")
        await conn.execute("SET iclaim_audit.expiring = 'on'")  # session-wide, too
        await _refused(conn, "DELETE FROM audit.entry_data", "append-only", switch=False)
        assert await conn.fetchval("SELECT count(*) FROM audit.entry_data") == 3
    finally:
        await conn.close()


async def test_signing_keys_and_ingest_offsets_are_guarded(database_url: str) -> None:
    await _seed(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        for sql in (
            "DELETE FROM audit.signing_keys",
            "UPDATE audit.signing_keys SET public_key = sha256('x')",
            "TRUNCATE audit.signing_keys",
        ):
            await _refused(conn, sql, "append-only")
        for sql in (
            "DELETE FROM audit.ingest_offsets",
            "TRUNCATE audit.ingest_offsets",
            "UPDATE audit.ingest_offsets SET source = 'other'",
            "UPDATE audit.ingest_offsets SET byte_offset = -1",
        ):
            await _refused(conn, sql, "only move|append-only")
            await _refused(conn, sql, "permission denied|only move", role=WRITER)
        await _refused(
            conn,
            "INSERT INTO audit.ingest_offsets (source, file_id, byte_offset) VALUES ('s', 'f', -1)",
            "byte_offset_check",
            role=WRITER,
        )
        assert await conn.fetchval("SELECT count(*) FROM audit.signing_keys") == 1
    finally:
        await conn.close()
    # What the tailer does still works: forward, and back to 0 after a truncation.
    pool = await create_pool(database_url, max_size=2)
    try:
        store = AuditStore(pool)
        await store.migrate()
        for pos in (Position("1:2:ab", 50), Position("1:2:ab", 7), Position("1:3:cd", 0)):
            await store.append([], OffsetUpdate("envoy-access-log", pos))
            assert await store.ingest_offset("envoy-access-log") == pos
    finally:
        await pool.close()


async def test_a_legal_hold_is_placed_and_released_never_shortened(database_url: str) -> None:
    async with audit_server(database_url) as (_running, stub):
        hold = (
            await stub.PlaceLegalHold(
                pb.PlaceLegalHoldRequest(
                    scope=pb.LEGAL_HOLD_SCOPE_PRINCIPAL, value="MTL", reference="CASE-2026-001"
                )
            )
        ).hold
        where = f" WHERE hold_id = {hold.hold_id}"
        conn = await asyncpg.connect(database_url)
        try:
            for sql in (
                "UPDATE audit.legal_holds SET released_at = now() - interval '1 day'",
                "UPDATE audit.legal_holds SET released_at = now() + interval '1 day'",
                "UPDATE audit.legal_holds SET value = 'AIA'",
                "UPDATE audit.legal_holds SET scope = 'transaction'",
                "UPDATE audit.legal_holds SET placed_at = now()",
            ):
                await _refused(conn, sql + where, "never changed", role=WRITER)
                await _refused(conn, sql + where, "never changed")
            await _refused(conn, "DELETE FROM audit.legal_holds" + where, "permission denied", role=WRITER)
            await _refused(conn, "DELETE FROM audit.legal_holds" + where, "never changed")
            await _refused(conn, "TRUNCATE audit.legal_holds", "append-only")

            # The service's release works, once; a release is then final.
            released = (await stub.ReleaseLegalHold(pb.ReleaseLegalHoldRequest(hold_id=hold.hold_id))).hold
            again = (await stub.ReleaseLegalHold(pb.ReleaseLegalHoldRequest(hold_id=hold.hold_id))).hold
            assert released.released_at == again.released_at and released.released_at.seconds > 0
            for sql in (
                "UPDATE audit.legal_holds SET released_at = NULL",
                "UPDATE audit.legal_holds SET released_at = released_at - interval '1 day'",
            ):
                await _refused(conn, sql + where, "never changed", role=WRITER)
        finally:
            await conn.close()


async def test_expiry_runs_as_a_role_the_writer_cannot_become(database_url: str) -> None:
    async with audit_server(database_url) as (_running, stub):
        # Hold first: the retention loop also runs once at start.
        await stub.PlaceLegalHold(
            pb.PlaceLegalHoldRequest(scope=pb.LEGAL_HOLD_SCOPE_PRINCIPAL, value="MTL", reference="CASE-1")
        )
        await stub.Append(
            pb.AppendRequest(
                events=[event(i, age_days=100) for i in range(4)]
                + [event(i, origin="MTL", age_days=100) for i in range(4, 6)]
                + [event(i, age_days=10) for i in range(6, 8)]
            )
        )
        await stub.ApplyRetention(pb.ApplyRetentionRequest())
        assert await _expired_flags(stub) == [True] * 4 + [False] * 4
    conn = await asyncpg.connect(database_url)
    try:
        fn = await conn.fetchrow(
            "SELECT pg_get_userbyid(p.proowner) AS owner, p.prosecdef, p.proconfig"
            " FROM pg_proc p WHERE p.oid = 'audit.expire_entries(integer, integer)'::regprocedure"
        )
        assert fn["owner"] == EXPIRER and fn["prosecdef"]
        assert "search_path=pg_catalog, pg_temp" in fn["proconfig"]
        role = await conn.fetchrow(
            "SELECT rolcanlogin, pg_has_role($2, oid, 'MEMBER') AS writer_member"
            " FROM pg_roles WHERE rolname = $1",
            EXPIRER,
            WRITER,
        )
        assert (role["rolcanlogin"], role["writer_member"]) == (False, False)
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {WRITER}")
            assert await conn.fetchval("SELECT audit.expire_entries(90, 100)") == 0
            with pytest.raises(asyncpg.RaiseError, match="limit"):
                await conn.fetchval("SELECT audit.expire_entries(90, -1)")
    finally:
        await conn.close()


async def test_service_logging_in_as_a_writer_member(database_url: str) -> None:
    """The production shape: the owner migrates, the service logs in with a role
    that holds iclaim_audit_writer and nothing else."""
    async with _login_role(database_url, f"GRANT {WRITER} TO {{r}}") as role:
        url = _as(database_url, role)
        with pytest.raises(ConfigError, match="0001_audit.sql, 0002"):
            await build_server(audit_config(url))  # cannot migrate: says so

        with pytest.raises(SystemExit, match="cannot migrate"):
            await migrate(url)
        await migrate(database_url)  # as the owner (superuser here)
        async with audit_server(url) as (running, stub):
            assert running.store.writer_role_enforced
            hold = await stub.PlaceLegalHold(
                pb.PlaceLegalHoldRequest(
                    scope=pb.LEGAL_HOLD_SCOPE_TRANSACTION, value="tx-held", reference="CASE-2"
                )
            )
            await stub.Append(
                pb.AppendRequest(
                    events=[event(i, age_days=100) for i in range(3)] + [event(3, tx="tx-held", age_days=100)]
                )
            )
            await stub.SignCheckpoint(pb.SignCheckpointRequest())
            await stub.ApplyRetention(pb.ApplyRetentionRequest())
            assert await _expired_flags(stub) == [True, True, True, False]
            await stub.ReleaseLegalHold(pb.ReleaseLegalHoldRequest(hold_id=hold.hold.hold_id))
            assert (await stub.ApplyRetention(pb.ApplyRetentionRequest())).expired == 1

        conn = await asyncpg.connect(url)
        try:
            await _refused(conn, "DELETE FROM audit.entry_data", "permission denied")
            await _refused(conn, "DELETE FROM audit.signing_keys", "permission denied")
            # The writer is no member of the expiry role: this login cannot become it.
            await _refused(conn, f"SET LOCAL ROLE {EXPIRER}", "permission denied")
            await _refused(
                conn, "UPDATE audit.legal_holds SET released_at = now() - interval '1 day'", "never changed"
            )
        finally:
            await conn.close()


async def test_an_owner_that_cannot_become_the_writer_is_refused_outside_dev(database_url: str) -> None:
    async with _login_role(
        database_url, 'GRANT CREATE ON DATABASE "{db}" TO {r}', f"GRANT {EXPIRER} TO {{r}}"
    ) as role:
        url = _as(database_url, role)
        with pytest.raises(ConfigError, match="ICLAIM_AUDIT_ALLOW_OWNER"):
            await build_server(audit_config(url))
        app = await build_server(audit_config(url, allow_owner=True))  # dev: owner mode
        await app.start()
        try:
            assert not app.store.writer_role_enforced
            await app.store.append([AuditEntry(**_fields(i)) for i in range(2)])
        finally:
            await app.stop(1.0)
        conn = await asyncpg.connect(url)
        try:
            # Even the owner's own session cannot switch the trigger off.
            await _refused(conn, "DELETE FROM audit.entry_data", "append-only")
            assert await conn.fetchval("SELECT count(*) FROM audit.entry_data") == 2
        finally:
            await conn.close()


async def test_a_migrating_role_that_cannot_hand_over_expiry_is_told_how(database_url: str) -> None:
    async with _login_role(database_url, 'GRANT CREATE ON DATABASE "{db}" TO {r}') as role:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="iclaim_audit_expirer") as err:
            await build_server(audit_config(_as(database_url, role), allow_owner=True))
        assert f"GRANT iclaim_audit_expirer TO {role}" in str(err.value.hint)


def test_owner_mode_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICLAIM_DATABASE_URL", "postgresql://x@127.0.0.1/x")
    monkeypatch.setenv("ICLAIM_MASTER_KEY", SecretBox.new_master_key())
    monkeypatch.delenv("ICLAIM_AUDIT_ALLOW_OWNER", raising=False)
    assert Config.from_env().allow_owner is False
    monkeypatch.setenv("ICLAIM_AUDIT_ALLOW_OWNER", "true")
    assert Config.from_env().allow_owner is True
    monkeypatch.setenv("ICLAIM_AUDIT_ALLOW_OWNER", "maybe")
    with pytest.raises(ConfigError):
        Config.from_env()
