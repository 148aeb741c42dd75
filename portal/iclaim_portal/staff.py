"""Staff accounts, password sign-in and the staff action log (SQL only, plus
argon2id for passwords)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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
# Password guesses per account: after this many failures in the window, refused.
MAX_FAILURES = 10
LOCKOUT_WINDOW = timedelta(minutes=15)


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

    async def create(self, username: str, display_name: str, role: str, password: str | None) -> Staff:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        row = await self.pool.fetchrow(
            "INSERT INTO staff (username, display_name, role, password_hash, webauthn_user_id)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING *",
            username,
            display_name,
            role,
            _hasher.hash(password) if password else None,
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
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or stored is None:
            return None
        if _hasher.check_needs_rehash(stored):
            await self.pool.execute(
                "UPDATE staff SET password_hash = $2 WHERE id = $1", row["id"], _hasher.hash(password)
            )
        return _staff(row)

    async def recent_failures(self, username: str, window: timedelta = LOCKOUT_WINDOW) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM staff_actions WHERE action = 'signin_failed' AND subject = $1"
                " AND at > now() - $2::interval",
                username,
                window,
            )
        )

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
