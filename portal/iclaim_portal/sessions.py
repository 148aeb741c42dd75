"""Server-side sessions: the cookie holds a random token, the row (keyed by its
SHA-256) holds who is signed in, the CSRF token and a pending WebAuthn challenge."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

SESSION_TTL = timedelta(hours=8)


@dataclass(frozen=True)
class Session:
    token: str
    staff_id: int | None
    csrf_token: str
    webauthn_challenge: bytes | None


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class SessionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def new(self, staff_id: int | None = None) -> Session:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        await self.pool.execute(
            "INSERT INTO sessions (token_sha256, staff_id, csrf_token, expires_at)"
            " VALUES ($1, $2, $3, now() + $4::interval)",
            _key(token),
            staff_id,
            csrf,
            SESSION_TTL,
        )
        return Session(token, staff_id, csrf, None)

    async def get(self, token: str) -> Session | None:
        row = await self.pool.fetchrow(
            "SELECT staff_id, csrf_token, webauthn_challenge FROM sessions"
            " WHERE token_sha256 = $1 AND expires_at > now()",
            _key(token),
        )
        if row is None:
            return None
        challenge = row["webauthn_challenge"]
        return Session(token, row["staff_id"], row["csrf_token"], bytes(challenge) if challenge else None)

    async def signed_in(self, old: Session, staff_id: int) -> Session:
        """A new session for the signed-in staff member; the anonymous one is
        dropped, so a token planted before sign-in is worth nothing after it.
        Expired sessions go here too, on every way of signing in."""
        await self.end(old.token)
        new = await self.new(staff_id)
        await self.purge_expired()
        return new

    async def end(self, token: str) -> None:
        await self.pool.execute("DELETE FROM sessions WHERE token_sha256 = $1", _key(token))

    async def set_challenge(self, token: str, challenge: bytes | None) -> None:
        await self.pool.execute(
            "UPDATE sessions SET webauthn_challenge = $2 WHERE token_sha256 = $1", _key(token), challenge
        )

    async def take_challenge(self, token: str) -> bytes | None:
        """The pending challenge, used once."""
        row = await self.pool.fetchrow(
            "UPDATE sessions s SET webauthn_challenge = NULL FROM"
            " (SELECT webauthn_challenge FROM sessions WHERE token_sha256 = $1 FOR UPDATE) old"
            " WHERE s.token_sha256 = $1 RETURNING old.webauthn_challenge",
            _key(token),
        )
        return bytes(row[0]) if row and row[0] else None

    async def purge_expired(self) -> int:
        result = await self.pool.execute("DELETE FROM sessions WHERE expires_at <= now()")
        return int(result.split()[-1])
