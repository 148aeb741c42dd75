"""Staff accounts, password sign-in and the staff action log (SQL only, plus
argon2id for passwords)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "clerk", "viewer")
# Roles that may change something at the clearinghouse (submit, cancel, decide, bill).
ACTING_ROLES = frozenset({"admin", "clerk"})

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both answers take as long.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


MIN_PASSWORD_LENGTH = 12
# Password guesses per username (an account's or not) and per client address:
# after this many failures in the window, refused. Behind a proxy every client
# has the proxy's address, so the address limit then caps guesses portal-wide.
MAX_FAILURES = 10
MAX_ADDRESS_FAILURES = 50
LOCKOUT_WINDOW = timedelta(minutes=15)
MAX_TRACKED = 10_000
# argon2id takes tens of milliseconds and 64 MiB per check: in worker threads,
# at most this many at once, so the event loop (every page, the insurer's
# puller) keeps running while guesses arrive. A fixed pool: a request given up
# while its check runs still holds its thread.
ARGON2_AT_ONCE = 2
_argon2_threads = ThreadPoolExecutor(max_workers=ARGON2_AT_ONCE, thread_name_prefix="argon2")
T = TypeVar("T")


class SigninLimits:
    """Password attempts per username and per client address in a sliding
    window, in memory (one process serves a portal; a restart forgets them).
    Each attempt counts before its password is checked, so parallel guesses
    cannot all pass the limit, and is forgiven once it succeeds. An unknown
    name is limited like a staff member's, so a lock says nothing about which
    names exist. Keys are SHA-256 digests (an unknown "name" may be a password
    typed in the wrong field); at most `max_tracked`, the oldest dropped first."""

    def __init__(
        self,
        *,
        per_name: int = MAX_FAILURES,
        per_address: int = MAX_ADDRESS_FAILURES,
        window: timedelta = LOCKOUT_WINDOW,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_name = per_name
        self.per_address = per_address
        self.window_s = window.total_seconds()
        self.max_tracked = max_tracked
        self.clock = clock
        self._attempts: dict[bytes, deque[float]] = {}

    def begin(self, username: str, address: str) -> bool:
        """Counts an attempt; False (not counted) once the name or the address has used up its limit."""
        now = self.clock()
        keys = (
            (_limit_key("name", username), self.per_name),
            (_limit_key("address", address), self.per_address),
        )
        if any(len(self._recent(key, now)) >= limit for key, limit in keys):
            return False
        for key, _ in keys:
            self._track(key).append(now)
        return True

    def succeeded(self, username: str, address: str) -> None:
        """The attempt just counted was right: not a failure."""
        for key in (_limit_key("name", username), _limit_key("address", address)):
            if attempts := self._attempts.get(key):
                attempts.pop()

    def _recent(self, key: bytes, now: float) -> deque[float]:
        attempts = self._attempts.get(key, deque())
        while attempts and attempts[0] <= now - self.window_s:
            attempts.popleft()
        return attempts

    def _track(self, key: bytes) -> deque[float]:
        if key not in self._attempts and len(self._attempts) >= self.max_tracked:
            now = self.clock()
            for old in [k for k in self._attempts if not self._recent(k, now)]:
                del self._attempts[old]
            while len(self._attempts) >= self.max_tracked:
                del self._attempts[next(iter(self._attempts))]
        return self._attempts.setdefault(key, deque())


def _limit_key(kind: str, value: str) -> bytes:
    return hashlib.sha256(f"{kind}\0{value}".encode()).digest()


class StaffChangeRefused(Exception):
    """A change to a staff account that is not allowed; the message is shown."""


@dataclass(frozen=True)
class Staff:
    id: int
    username: str
    display_name: str
    role: str
    webauthn_user_id: bytes

    @property
    def may_act(self) -> bool:
        return self.role in ACTING_ROLES

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _staff(row: asyncpg.Record) -> Staff:
    return Staff(row["id"], row["username"], row["display_name"], row["role"], bytes(row["webauthn_user_id"]))


class StaffStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # waiting here, not in the pool's queue: a request given up while waiting costs nothing
        self._argon2_slots = asyncio.Semaphore(ARGON2_AT_ONCE)

    async def _argon2(self, work: Callable[..., T], *args: str) -> T:
        async with self._argon2_slots:
            return await asyncio.get_running_loop().run_in_executor(_argon2_threads, work, *args)

    async def _verify(self, stored: str, password: str) -> bool:
        try:
            return await self._argon2(_hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return False

    async def create(self, username: str, display_name: str, role: str, password: str | None) -> Staff:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        row = await self.pool.fetchrow(
            "INSERT INTO staff (username, display_name, role, password_hash, webauthn_user_id)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING *",
            username,
            display_name,
            role,
            await self._argon2(_hasher.hash, password) if password else None,
            secrets.token_bytes(32),
        )
        return _staff(row)

    async def all(self) -> list[Staff]:
        rows = await self.pool.fetch("SELECT * FROM staff WHERE disabled_at IS NULL ORDER BY username")
        return [_staff(r) for r in rows]

    async def count(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM staff"))

    async def get(self, staff_id: int) -> Staff | None:
        row = await self.pool.fetchrow("SELECT * FROM staff WHERE id = $1 AND disabled_at IS NULL", staff_id)
        return _staff(row) if row else None

    async def by_username(self, username: str) -> Staff | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM staff WHERE username = $1 AND disabled_at IS NULL", username
        )
        return _staff(row) if row else None

    async def username_taken(self, username: str) -> bool:
        """Disabled accounts keep their names: the staff log refers to them."""
        return bool(
            await self.pool.fetchval("SELECT EXISTS (SELECT 1 FROM staff WHERE username = $1)", username)
        )

    async def set_role(self, username: str, role: str) -> Staff:
        """Changes an active member's role; the last admin stays one."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        return await self._change(
            username, role != "admin", False, "UPDATE staff SET role = $2 WHERE id = $1 RETURNING *", role
        )

    async def disable(self, username: str) -> Staff:
        """Ends the member's access at once (sign-in refused, sessions ended);
        the account and its log stay."""
        return await self._change(
            username, True, True, "UPDATE staff SET disabled_at = now() WHERE id = $1 RETURNING *"
        )

    async def _change(
        self, username: str, drops_admin: bool, end_sessions: bool, update: str, *args: Any
    ) -> Staff:
        async with self.pool.acquire() as conn, conn.transaction():
            # Locking every active admin serialises concurrent changes, so two
            # admins cannot each demote the other and leave none.
            admins = await conn.fetch(
                "SELECT id FROM staff WHERE role = 'admin' AND disabled_at IS NULL ORDER BY id FOR UPDATE"
            )
            row = await conn.fetchrow(
                "SELECT * FROM staff WHERE username = $1 AND disabled_at IS NULL FOR UPDATE", username
            )
            if row is None:
                raise StaffChangeRefused("No such staff member.")
            if drops_admin and row["role"] == "admin" and len(admins) <= 1:
                raise StaffChangeRefused("The last admin cannot be disabled or lose the admin role.")
            changed = await conn.fetchrow(update, row["id"], *args)
            if end_sessions:
                await conn.execute("DELETE FROM sessions WHERE staff_id = $1", row["id"])
            return _staff(changed)

    async def check_password(self, username: str, password: str) -> Staff | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM staff WHERE username = $1 AND disabled_at IS NULL", username
        )
        stored = row["password_hash"] if row else None
        if not await self._verify(stored or _DUMMY_HASH, password):
            return None
        if row is None or stored is None:
            return None
        if _hasher.check_needs_rehash(stored):
            await self.pool.execute(
                "UPDATE staff SET password_hash = $2 WHERE id = $1",
                row["id"],
                await self._argon2(_hasher.hash, password),
            )
        return _staff(row)

    async def log(self, staff: Staff | None, action: str, subject: str = "", **detail: Any) -> None:
        """Who did what; `detail` holds identifiers and amounts, never patient data."""
        await self.pool.execute(
            "INSERT INTO staff_actions (staff_id, action, subject, detail) VALUES ($1, $2, $3, $4::jsonb)",
            staff.id if staff else None,
            action,
            subject,
            json.dumps(detail),
        )

    async def recent_actions(self, limit: int = 100) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT a.at, a.action, a.subject, a.detail, s.username FROM staff_actions a"
                " LEFT JOIN staff s ON s.id = a.staff_id ORDER BY a.id DESC LIMIT $1",
                limit,
            )
        )
