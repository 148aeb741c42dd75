"""PostgreSQL-backed registry of principals and keys (schema `registry`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from iclaim_hub.common.db import apply_migrations
from iclaim.errors import FailedPrecondition, NotFound
from iclaim_hub.crypto.secretbox import SecretBox, SecretBoxError
from iclaim_hub.registry.model import EncryptionKeyRecord, Principal, SigningKey

SCHEMA = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"


MAX_ACTIVE_SIGNING_KEYS = 2  # docs/protocol.md §1: two at once, for rotation
_QUERY_TIMEOUT_S = 5
# The gateway's key lookup sits inside Envoy's 5 s ext_authz deadline: fail
# first, with a typed REGISTRY_UNAVAILABLE, rather than be cut off.
_LOOKUP_TIMEOUT_S = 2


def _secret_context(code: str, key_id: str) -> str:
    return f"signing-key:{code}:{key_id}"


@dataclass(frozen=True)
class GatewayKey(SigningKey):
    """A SigningKey plus what the gateway also enforces for its principal."""

    require_mtls: bool = False


class TooManyActiveKeys(FailedPrecondition):
    default_reason = "TOO_MANY_ACTIVE_KEYS"


def _too_many(code: str) -> TooManyActiveKeys:
    return TooManyActiveKeys(
        f"principal {code} already has {MAX_ACTIVE_SIGNING_KEYS} active signing keys;"
        " revoke one first (or rotate)",
        reason="TOO_MANY_ACTIVE_KEYS",
    )


class RegistryStore:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self._pool = pool
        self._box = box

    async def migrate(self) -> None:
        await apply_migrations(self._pool, SCHEMA, MIGRATIONS)

    # --- reads -----------------------------------------------------------------
    async def signing_key(self, code: str, key_id: str) -> SigningKey | None:
        """The active key (a GatewayKey) or None if unknown, revoked or unreadable."""
        row = await self._pool.fetchrow(
            "SELECT k.secret_sealed, p.role, p.suspended, p.require_mtls"
            " FROM registry.signing_keys k"
            " JOIN registry.principals p ON p.code = k.principal_code"
            " WHERE k.principal_code = $1 AND k.key_id = $2 AND k.status = 'active'",
            code,
            key_id,
            timeout=_LOOKUP_TIMEOUT_S,
        )
        if row is None:
            return None
        try:
            secret = self._box.open(row["secret_sealed"], _secret_context(code, key_id))
        except SecretBoxError:
            return None
        return GatewayKey(code, key_id, secret, row["role"], row["suspended"], row["require_mtls"])

    async def active_signing_key_ids(self, code: str) -> list[str]:
        """Active key ids, oldest first (never the secrets)."""
        rows = await self._pool.fetch(
            "SELECT key_id FROM registry.signing_keys WHERE principal_code = $1"
            " AND status = 'active' ORDER BY created_at, key_id",
            code,
            timeout=_QUERY_TIMEOUT_S,
        )
        return [r["key_id"] for r in rows]

    async def principals(self, role: str | None = None) -> list[Principal]:
        rows = await self._pool.fetch(
            "SELECT * FROM registry.principals WHERE ($1::text IS NULL OR role = $1) ORDER BY code",
            role,
        )
        keys = await self._pool.fetch(
            "SELECT principal_code, kid, public_jwk, status, previous_since"
            " FROM registry.encryption_keys"
            " WHERE status <> 'retired' ORDER BY created_at, kid"
        )
        by_code: dict[str, list[EncryptionKeyRecord]] = {}
        for k in keys:
            by_code.setdefault(k["principal_code"], []).append(
                EncryptionKeyRecord(k["kid"], json.loads(k["public_jwk"]), k["status"], k["previous_since"])
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
            "SELECT kid, public_jwk, status, previous_since FROM registry.encryption_keys"
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
                EncryptionKeyRecord(k["kid"], json.loads(k["public_jwk"]), k["status"], k["previous_since"])
                for k in keys
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
        """Adds (or re-seals and re-activates) a key; raises TooManyActiveKeys when
        the principal already has two other active keys (the database enforces it)."""
        sealed = self._box.seal(secret, _secret_context(code, key_id))
        try:
            await self._pool.execute(
                "INSERT INTO registry.signing_keys (principal_code, key_id, secret_sealed)"
                " VALUES ($1, $2, $3) ON CONFLICT (principal_code, key_id)"
                " DO UPDATE SET secret_sealed = EXCLUDED.secret_sealed, status = 'active',"
                " revoked_at = NULL",
                code,
                key_id,
                sealed,
                timeout=_QUERY_TIMEOUT_S,
            )
        except asyncpg.CheckViolationError as exc:
            raise _too_many(code) from exc

    async def rotate_signing_key(
        self, code: str, new_key_id: str, secret: bytes, *, revoke_key_id: str | None = None
    ) -> None:
        """Adds `new_key_id` and, in the same transaction, revokes `revoke_key_id`
        (or, when two keys are active and none is named, the oldest), so a
        principal never has more than two active keys nor zero."""
        sealed = self._box.seal(secret, _secret_context(code, new_key_id))
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchval(
                "SELECT code FROM registry.principals WHERE code = $1 FOR UPDATE",
                code,
                timeout=_QUERY_TIMEOUT_S,
            )
            if locked is None:
                raise NotFound(f"no principal {code}", reason="PRINCIPAL_NOT_FOUND")
            active = [
                r["key_id"]
                for r in await conn.fetch(
                    "SELECT key_id FROM registry.signing_keys WHERE principal_code = $1"
                    " AND status = 'active' AND key_id <> $2 ORDER BY created_at, key_id",
                    code,
                    new_key_id,
                    timeout=_QUERY_TIMEOUT_S,
                )
            ]
            if revoke_key_id is None and len(active) >= MAX_ACTIVE_SIGNING_KEYS:
                revoke_key_id = active[0]
            if revoke_key_id is not None:
                await self._revoke(conn, code, revoke_key_id)
            try:
                await conn.execute(
                    "INSERT INTO registry.signing_keys (principal_code, key_id, secret_sealed)"
                    " VALUES ($1, $2, $3) ON CONFLICT (principal_code, key_id)"
                    " DO UPDATE SET secret_sealed = EXCLUDED.secret_sealed, status = 'active',"
                    " revoked_at = NULL",
                    code,
                    new_key_id,
                    sealed,
                    timeout=_QUERY_TIMEOUT_S,
                )
            except asyncpg.CheckViolationError as exc:
                raise _too_many(code) from exc

    async def revoke_signing_key(self, code: str, key_id: str) -> None:
        """Revokes at once in the registry; gateways stop accepting it within
        their key-cache TTL (at most 5 s)."""
        async with self._pool.acquire() as conn:
            await self._revoke(conn, code, key_id)

    @staticmethod
    async def _revoke(conn: asyncpg.Connection, code: str, key_id: str) -> None:
        await conn.execute(
            "UPDATE registry.signing_keys SET status = 'revoked',"
            " revoked_at = coalesce(revoked_at, now())"
            " WHERE principal_code = $1 AND key_id = $2",
            code,
            key_id,
            timeout=_QUERY_TIMEOUT_S,
        )

    async def set_require_mtls(self, code: str, required: bool) -> None:
        """When set, the gateway refuses this principal's calls that come
        without a client certificate naming it."""
        await self._pool.execute(
            "UPDATE registry.principals SET require_mtls = $2, updated_at = now() WHERE code = $1",
            code,
            required,
            timeout=_QUERY_TIMEOUT_S,
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
