"""The PostgreSQL roles deploy/k8s/README.md tells operators to create, run as
written (login names made unique: roles are cluster-wide) on the real server:
the audit schema's owner migrates as the `migrate` init container does, the
audit-log service starts with its writer login and appends, and neither the
other services' shared login nor the service's own can touch the log's rows or
switch its append-only triggers off."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from services.audit_log.migrate import migrate
from tests.support.audit import audit_server, event
from tests.support.databases import PG_ADMIN_URL

README = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "README.md"
SHARED_ROLES = ("iclaim_audit_writer", "iclaim_audit_expirer")  # fixed names the migrations use


def readme_sql() -> list[str]:
    text = README.read_text()
    block = re.search(r"The roles, created once by a superuser.*?```sql\n(.*?)```", text, re.S)
    assert block is not None, "deploy/k8s/README.md lost its role set-up"
    statements = [re.sub(r"--[^\n]*", "", s).strip() for s in block[1].split(";")]
    return [s for s in statements if s]


def _as(database_url: str, role: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


@asynccontextmanager
async def readme_roles(database_url: str) -> AsyncIterator[dict[str, str]]:
    """Runs the README's statements; yields README login name -> this test's."""
    prefix = f"t_k8s_{secrets.token_hex(4)}"
    names = {
        "iclaim_audit_owner": f"{prefix}_owner",
        "iclaim_audit": f"{prefix}_audit",
        "iclaim": f"{prefix}_svc",
    }
    database = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for sql in readme_sql():
            sql = re.sub(r":'\w+'", "'unused-with-trust-auth'", sql)
            sql = re.sub(r"\bDATABASE iclaim\b", f'DATABASE "{database}"', sql)
            for readme_name, ours in names.items():
                sql = re.sub(rf"\b{readme_name}\b", ours, sql)
            shared = re.fullmatch(r"CREATE ROLE (\w+) NOLOGIN", sql)
            # Other tests' migrations may have made a shared role already on this server.
            if (
                shared is not None
                and shared[1] in SHARED_ROLES
                and await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", shared[1])
            ):
                continue
            await admin.execute(sql)
        yield names
    finally:
        db = await asyncpg.connect(database_url)
        try:
            for role in names.values():
                await db.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
                await db.execute(f"DROP OWNED BY {role}")
        finally:
            await db.close()
        for role in names.values():
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_the_documented_roles_run_the_audit_log_append_only(database_url: str) -> None:
    async with readme_roles(database_url) as roles:
        await migrate(_as(database_url, roles["iclaim_audit_owner"]))  # the init container

        service_url = _as(database_url, roles["iclaim_audit"])
        async with audit_server(service_url) as (running, stub):
            assert running.store.writer_role_enforced
            await stub.Append(pb.AppendRequest(events=[event(i) for i in range(3)]))

        for role in (roles["iclaim_audit"], roles["iclaim"]):
            conn = await asyncpg.connect(_as(database_url, role))
            try:
                for sql in (
                    "DELETE FROM audit.entry_data",
                    "UPDATE audit.leaves SET leaf_hash = leaf_hash",
                    "ALTER TABLE audit.entry_data DISABLE TRIGGER ALL",
                    "CREATE TABLE audit.extra (id int)",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(sql)
            finally:
                await conn.close()
        admin = await asyncpg.connect(database_url)
        try:
            assert await admin.fetchval("SELECT count(*) FROM audit.entry_data") == 3
        finally:
            await admin.close()
