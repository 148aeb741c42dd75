"""PostgreSQL-backed registry of principals and keys (schema `registry`)."""
from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from iclaim.common.db import apply_migrations
from iclaim.crypto.secretbox import SecretBox, SecretBoxError
from iclaim.registry.model import EncryptionKeyRecord, Principal, SigningKey

SCHEMA = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"


def _secret_context(code: str, key_id: str) -> str:
    return f"signing-key:{code}:{key_id}"


class RegistryStore:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self._pool = pool
        self._box = box

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    # --- reads -----------------------------------------------------------------
    async def signing_key(self, code: str, key_id: str) -> SigningKey | None:
        row = await self._pool.fetchrow(
            "SELECT k.secret_sealed, p.role, p.suspended FROM registry.signing_keys k"
            " JOIN registry.principals p ON p.code = k.principal_code"
            " WHERE k.principal_code = $1 AND k.key_id = $2 AND k.status = 'active'",
            code,
            key_id,
        )
        if row is None:
            return None
        try:
            secret = self._box.open(row["secret_sealed"], _secret_context(code, key_id))
        except SecretBoxError:
            return None
        return SigningKey(code, key_id, secret, row["role"], row["suspended"])

    async def principals(self, role: str | None = None) -> list[Principal]:
        rows = await self._pool.fetch(
            "SELECT * FROM registry.principals WHERE ($1::text IS NULL OR role = $1) ORDER BY code",
            role,
        )
        keys = await self._pool.fetch(
            "SELECT principal_code, kid, public_jwk, status FROM registry.encryption_keys"
            " WHERE status <> 'retired' ORDER BY created_at, kid"
        )
        by_code: dict[str, list[EncryptionKeyRecord]] = {}
        for k in keys:
            by_code.setdefault(k["principal_code"], []).append(
                EncryptionKeyRecord(k["kid"], json.loads(k["public_jwk"]), k["status"])
            )
        return [
            Principal(
                code=r["code"],
                role=r["role"],
                display_name=r["display_name"],
                line=r["line"],
                delivery_mode=r["delivery_mode"],
                available=r["available"],
                suspended=r["suspended"],
                keys=tuple(by_code.get(r["code"], ())),
            )
            for r in rows
        ]

    async def principal(self, code: str) -> Principal | None:
        row = await self._pool.fetchrow("SELECT * FROM registry.principals WHERE code = $1", code)
        if row is None:
            return None
        keys = await self._pool.fetch(
            "SELECT kid, public_jwk, status FROM registry.encryption_keys"
            " WHERE principal_code = $1 AND status <> 'retired' ORDER BY created_at, kid",
            code,
        )
        return Principal(
            code=row["code"],
            role=row["role"],
            display_name=row["display_name"],
            line=row["line"],
            delivery_mode=row["delivery_mode"],
            available=row["available"],
            suspended=row["suspended"],
            keys=tuple(
                EncryptionKeyRecord(k["kid"], json.loads(k["public_jwk"]), k["status"]) for k in keys
            ),
        )

    # --- writes (enrolment, key lifecycle) ---------------------------------------
    async def upsert_principal(self, p: Principal) -> None:
        await self._pool.execute(
            "INSERT INTO registry.principals (code, role, display_name, line, delivery_mode,"
            " available, suspended) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (code) DO UPDATE SET role = EXCLUDED.role,"
            " display_name = EXCLUDED.display_name, line = EXCLUDED.line,"
            " delivery_mode = EXCLUDED.delivery_mode, available = EXCLUDED.available,"
            " suspended = EXCLUDED.suspended, updated_at = now()",
            p.code,
            p.role,
            p.display_name,
            p.line,
            p.delivery_mode,
            p.available,
            p.suspended,
        )

    async def add_signing_key(self, code: str, key_id: str, secret: bytes) -> None:
        sealed = self._box.seal(secret, _secret_context(code, key_id))
        await self._pool.execute(
            "INSERT INTO registry.signing_keys (principal_code, key_id, secret_sealed)"
            " VALUES ($1, $2, $3) ON CONFLICT (principal_code, key_id)"
            " DO UPDATE SET secret_sealed = EXCLUDED.secret_sealed, status = 'active'",
            code,
            key_id,
            sealed,
        )

    async def revoke_signing_key(self, code: str, key_id: str) -> None:
        await self._pool.execute(
            "UPDATE registry.signing_keys SET status = 'revoked'"
            " WHERE principal_code = $1 AND key_id = $2",
            code,
            key_id,
        )

    async def set_suspended(self, code: str, suspended: bool) -> None:
        await self._pool.execute(
            "UPDATE registry.principals SET suspended = $2, updated_at = now() WHERE code = $1",
            code,
            suspended,
        )

    async def add_encryption_key(self, code: str, kid: str, public_jwk: dict[str, object]) -> None:
        """Makes `kid` current; the previous current key stays accepted as `previous`."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE registry.encryption_keys SET status = 'retired'"
                " WHERE principal_code = $1 AND status = 'previous'",
                code,
            )
            await conn.execute(
                "UPDATE registry.encryption_keys SET status = 'previous'"
                " WHERE principal_code = $1 AND status = 'current' AND kid <> $2",
                code,
                kid,
            )
            await conn.execute(
                "INSERT INTO registry.encryption_keys (principal_code, kid, public_jwk, status)"
                " VALUES ($1, $2, $3::jsonb, 'current') ON CONFLICT (principal_code, kid)"
                " DO UPDATE SET public_jwk = EXCLUDED.public_jwk, status = 'current'",
                code,
                kid,
                json.dumps(public_jwk),
            )
