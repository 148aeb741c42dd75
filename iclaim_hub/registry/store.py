"""PostgreSQL-backed registry of principals and keys (schema `registry`)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from iclaim_hub.common.db import apply_migrations
from iclaim_hub.common.fields import copy_columns
from iclaim.errors import FailedPrecondition, InvalidArgument, NotFound
from iclaim_hub.crypto.secretbox import SecretBox, SecretBoxError
from iclaim_hub.registry.endpoints import check_ca_pem, check_delivery_mode, check_endpoint
from iclaim_hub.registry.model import (
    DELIVERY_PULL,
    HEALTH_VALUES,
    EncryptionKeyRecord,
    EndpointKey,
    InsurerHealth,
    Principal,
    SigningKey,
)

SCHEMA = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"


MAX_ACTIVE_SIGNING_KEYS = 2  # docs/protocol.md §1: two at once, for rotation
_QUERY_TIMEOUT_S = 5
# The gateway's key lookup sits inside Envoy's 5 s ext_authz deadline: fail
# first, with a typed REGISTRY_UNAVAILABLE, rather than be cut off.
_LOOKUP_TIMEOUT_S = 2


def _secret_context(code: str, key_id: str) -> str:
    return f"signing-key:{code}:{key_id}"


def _endpoint_secret_context(code: str, key_id: str) -> str:
    # Bound to its row like signing secrets: copied onto another insurer, it does not open.
    return f"endpoint-key:{code}:{key_id}"


ENDPOINT_SECRET_BYTES = 32  # §10.1: a 32-byte secret
UNKNOWN_PRINCIPAL = "UNKNOWN_PRINCIPAL"


def _unknown(code: str) -> NotFound:
    return NotFound(f"no insurer {code} in the registry", reason=UNKNOWN_PRINCIPAL)


async def _lock_principal(conn: asyncpg.Connection, code: str) -> asyncpg.Record | None:
    """Its row, locked: writers of one principal's keys and endpoint queue on it."""
    return await conn.fetchrow(
        "SELECT * FROM registry.principals WHERE code = $1 FOR UPDATE", code, timeout=_QUERY_TIMEOUT_S
    )


async def _lock_insurer(conn: asyncpg.Connection, code: str) -> asyncpg.Record:
    """The same for an insurer's row; NotFound UNKNOWN_PRINCIPAL without one."""
    row = await _lock_principal(conn, code)
    if row is None or row["role"] != "insurer":
        raise _unknown(code)
    return row


def _principal(row: Mapping[str, Any], keys: tuple[EncryptionKeyRecord, ...]) -> Principal:
    return copy_columns(Principal, row, keys=keys)


def _key_record(row: Mapping[str, Any]) -> EncryptionKeyRecord:
    return EncryptionKeyRecord(
        row["kid"], json.loads(row["public_jwk"]), row["status"], row["previous_since"]
    )


# A principal with its non-retired encryption keys in one statement (one
# commit, one snapshot: a key rotation is seen whole or not at all). The keys
# arrive as an array of anonymous records, in _KEY_FIELDS order.
_KEY_FIELDS = ("kid", "public_jwk", "status", "previous_since")
_WITH_KEYS = (
    "SELECT p.*, ARRAY(SELECT ROW(k.kid, k.public_jwk, k.status, k.previous_since)"
    " FROM registry.encryption_keys k WHERE k.principal_code = p.code AND k.status <> 'retired'"
    " ORDER BY k.created_at, k.kid) AS encryption_keys"
    " FROM registry.principals p"
)


def _principal_with_keys(row: Mapping[str, Any]) -> Principal:
    keys = tuple(_key_record(dict(zip(_KEY_FIELDS, k, strict=True))) for k in row["encryption_keys"])
    return _principal(row, keys)


def _health(row: Mapping[str, Any]) -> InsurerHealth:
    return InsurerHealth(
        insurer_code=row["insurer_code"],
        health=row["health"],
        consecutive_failures=row["consecutive_failures"],
        last_pull_at=row["last_pull_at"],
        updated_at=row["updated_at"],
        last_success_at=row["last_success_at"],
        last_failure_at=row["last_failure_at"],
    )


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
            f"{_WITH_KEYS} WHERE ($1::text IS NULL OR p.role = $1) ORDER BY p.code",
            role,
            timeout=_QUERY_TIMEOUT_S,
        )
        return [_principal_with_keys(r) for r in rows]

    async def principal(self, code: str) -> Principal | None:
        row = await self._pool.fetchrow(f"{_WITH_KEYS} WHERE p.code = $1", code, timeout=_QUERY_TIMEOUT_S)
        return None if row is None else _principal_with_keys(row)

    async def principal_and_endpoint_key(self, code: str) -> tuple[Principal, EndpointKey | None] | None:
        """`principal(code)` and `endpoint_key(code)` read in one statement: the
        delivery layer's endpoint cache reloads both for every busy push insurer
        every few seconds (one commit instead of three)."""
        row = await self._pool.fetchrow(
            # The key's columns are renamed so none shadows a principal's.
            "SELECT q.*, e.key_id AS endpoint_key_id, e.secret_sealed AS endpoint_secret_sealed"
            f" FROM ({_WITH_KEYS} WHERE p.code = $1) q"
            " LEFT JOIN registry.endpoint_keys e ON e.insurer_code = q.code AND e.revoked_at IS NULL",
            code,
            timeout=_QUERY_TIMEOUT_S,
        )
        if row is None:
            return None
        return _principal_with_keys(row), self._open_endpoint_key(
            code, row["endpoint_key_id"], row["endpoint_secret_sealed"]
        )

    # --- writes (enrolment, key lifecycle) ---------------------------------------
    async def upsert_principal(self, p: Principal) -> None:
        """Writes every field of `p` (seeding and tests). The database checks the
        delivery mode; endpoint shapes are checked by `set_endpoint` (operators)
        or by the caller with iclaim_hub.registry.endpoints first."""
        await self._pool.execute(
            "INSERT INTO registry.principals (code, role, display_name, line, delivery_mode,"
            " available, suspended, endpoint, endpoint_ca_pem, endpoint_mtls)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (code) DO UPDATE SET role = EXCLUDED.role,"
            " display_name = EXCLUDED.display_name, line = EXCLUDED.line,"
            " delivery_mode = EXCLUDED.delivery_mode, available = EXCLUDED.available,"
            " suspended = EXCLUDED.suspended, endpoint = EXCLUDED.endpoint,"
            " endpoint_ca_pem = EXCLUDED.endpoint_ca_pem, endpoint_mtls = EXCLUDED.endpoint_mtls,"
            " updated_at = now()",
            p.code,
            p.role,
            p.display_name,
            p.line,
            p.delivery_mode,
            p.available,
            p.suspended,
            p.endpoint,
            p.endpoint_ca_pem,
            p.endpoint_mtls,
        )

    async def add_signing_key(self, code: str, key_id: str, secret: bytes) -> None:
        """Adds (or re-seals and re-activates) a key; raises TooManyActiveKeys when
        the principal already has two other active keys (the database enforces it)."""
        async with self._pool.acquire() as conn:
            await self._put_signing_key(conn, code, key_id, secret)

    async def _put_signing_key(self, conn: asyncpg.Connection, code: str, key_id: str, secret: bytes) -> None:
        try:
            await conn.execute(
                "INSERT INTO registry.signing_keys (principal_code, key_id, secret_sealed)"
                " VALUES ($1, $2, $3) ON CONFLICT (principal_code, key_id)"
                " DO UPDATE SET secret_sealed = EXCLUDED.secret_sealed, status = 'active',"
                " revoked_at = NULL",
                code,
                key_id,
                self._box.seal(secret, _secret_context(code, key_id)),
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
        async with self._pool.acquire() as conn, conn.transaction():
            if await _lock_principal(conn, code) is None:
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
            await self._put_signing_key(conn, code, new_key_id, secret)

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
        """Makes `kid` current; the previous current key stays accepted as `previous`.
        At most one key is current (a unique index); writers for one principal
        queue on its row, so concurrent rotations end with the last one current."""
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_principal(conn, code)
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

    # --- insurer connectivity (§10, §11) -------------------------------------------
    async def set_endpoint(
        self,
        code: str,
        *,
        delivery_mode: str | None = None,
        endpoint: str | None = None,
        endpoint_ca_pem: str | None = None,
        endpoint_mtls: bool | None = None,
        available: bool | None = None,
    ) -> Principal:
        """Changes the named fields of an insurer (None: unchanged) and returns
        the entry. The result is checked as a whole (a grpc insurer needs
        HOST:PORT, a webhook insurer an https:// URL, a pull insurer none);
        switching to pull without naming an endpoint clears it. A refusal
        (InvalidArgument, or NotFound UNKNOWN_PRINCIPAL) changes nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await _lock_insurer(conn, code)
            mode = check_delivery_mode(delivery_mode if delivery_mode is not None else row["delivery_mode"])
            if endpoint is None:
                endpoint = "" if delivery_mode == DELIVERY_PULL else row["endpoint"]
            endpoint = check_endpoint(mode, endpoint)
            ca = check_ca_pem(endpoint_ca_pem if endpoint_ca_pem is not None else row["endpoint_ca_pem"])
            await conn.execute(
                "UPDATE registry.principals SET delivery_mode = $2, endpoint = $3, endpoint_ca_pem = $4,"
                " endpoint_mtls = coalesce($5, endpoint_mtls), available = coalesce($6, available),"
                " updated_at = now() WHERE code = $1",
                code,
                mode,
                endpoint,
                ca,
                endpoint_mtls,
                available,
                timeout=_QUERY_TIMEOUT_S,
            )
        updated = await self.principal(code)
        assert updated is not None  # principals are never deleted
        return updated

    async def issue_endpoint_key(self, code: str) -> EndpointKey:
        """A new endpoint key (32 random bytes, id `ep-<hex>`) for an insurer;
        the previous one is revoked in the same transaction, so new pushes are
        signed with the new key at once (§11)."""
        key_id = f"ep-{secrets.token_hex(12)}"
        secret = os.urandom(ENDPOINT_SECRET_BYTES)
        sealed = self._box.seal(secret, _endpoint_secret_context(code, key_id))
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_insurer(conn, code)
            await conn.execute(
                "UPDATE registry.endpoint_keys SET revoked_at = now()"
                " WHERE insurer_code = $1 AND revoked_at IS NULL",
                code,
                timeout=_QUERY_TIMEOUT_S,
            )
            await conn.execute(
                "INSERT INTO registry.endpoint_keys (key_id, insurer_code, secret_sealed)"
                " VALUES ($1, $2, $3)",
                key_id,
                code,
                sealed,
                timeout=_QUERY_TIMEOUT_S,
            )
        return EndpointKey(code, key_id, secret)

    async def endpoint_key(self, code: str) -> EndpointKey | None:
        """The insurer's current endpoint key, or None if it has none (or its
        sealed secret does not open under this master key)."""
        row = await self._pool.fetchrow(
            "SELECT key_id, secret_sealed FROM registry.endpoint_keys"
            " WHERE insurer_code = $1 AND revoked_at IS NULL",
            code,
            timeout=_QUERY_TIMEOUT_S,
        )
        if row is None:
            return None
        return self._open_endpoint_key(code, row["key_id"], row["secret_sealed"])

    def _open_endpoint_key(self, code: str, key_id: str | None, sealed: bytes | None) -> EndpointKey | None:
        if key_id is None or sealed is None:
            return None
        try:
            secret = self._box.open(sealed, _endpoint_secret_context(code, key_id))
        except SecretBoxError:
            return None
        return EndpointKey(code, key_id, secret)

    async def set_push_health(self, code: str, health: str, consecutive_failures: int) -> None:
        """The delivery layer's view of a push insurer (§10.5). Stamps
        last_success_at when `consecutive_failures` is 0, else last_failure_at."""
        if health not in HEALTH_VALUES:
            raise InvalidArgument(
                "health must be unknown, healthy, degraded or down", reason="HEALTH_INVALID"
            )
        if consecutive_failures < 0:
            raise InvalidArgument("consecutive_failures must not be negative", reason="HEALTH_INVALID")
        try:
            await self._pool.execute(
                "INSERT INTO registry.insurer_health AS h (insurer_code, health, consecutive_failures,"
                " last_success_at, last_failure_at)"
                " VALUES ($1, $2, $3, CASE WHEN $3 = 0 THEN now() END, CASE WHEN $3 > 0 THEN now() END)"
                " ON CONFLICT (insurer_code) DO UPDATE SET health = EXCLUDED.health,"
                " consecutive_failures = EXCLUDED.consecutive_failures,"
                " last_success_at = coalesce(EXCLUDED.last_success_at, h.last_success_at),"
                " last_failure_at = coalesce(EXCLUDED.last_failure_at, h.last_failure_at),"
                " updated_at = now()",
                code,
                health,
                consecutive_failures,
                timeout=_QUERY_TIMEOUT_S,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise _unknown(code) from exc

    async def record_pull(self, code: str) -> None:
        """A pull insurer called PullClaims now (callers throttle)."""
        try:
            await self._pool.execute(
                "INSERT INTO registry.insurer_health (insurer_code, last_pull_at) VALUES ($1, now())"
                " ON CONFLICT (insurer_code) DO UPDATE SET last_pull_at = now(), updated_at = now()",
                code,
                timeout=_QUERY_TIMEOUT_S,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise _unknown(code) from exc

    async def health(self, code: str) -> InsurerHealth | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM registry.insurer_health WHERE insurer_code = $1", code, timeout=_QUERY_TIMEOUT_S
        )
        return None if row is None else _health(row)

    async def healths(self) -> dict[str, InsurerHealth]:
        rows = await self._pool.fetch("SELECT * FROM registry.insurer_health", timeout=_QUERY_TIMEOUT_S)
        return {r["insurer_code"]: _health(r) for r in rows}
