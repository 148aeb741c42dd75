"""`python -m services.audit_log.migrate`: applies the audit schema's
migrations with ICLAIM_DATABASE_URL (the schema owner or a superuser) and
exits. For deployments where audit_log itself logs in as a member of
iclaim_audit_writer, which cannot migrate (e.g. a Kubernetes init container
holding the owner's URL, which the service container never sees)."""

from __future__ import annotations

import asyncio

from iclaim_hub.common.config import env_str
from iclaim_hub.common.db import create_pool
from services.audit_log.store import AuditStore


async def migrate(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=1)
    try:
        login = await AuditStore(pool).migrate()
    finally:
        await pool.close()
    if login.pending:
        raise SystemExit(f"this login cannot migrate schema audit ({', '.join(login.pending)} missing)")


def main() -> None:
    asyncio.run(migrate(env_str("ICLAIM_DATABASE_URL")))


if __name__ == "__main__":
    main()
