"""Registry records: principals and their public keys (no storage code here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# How long a rotated-out (`previous`) encryption key stays accepted.
DEFAULT_KEY_GRACE_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class EncryptionKeyRecord:
    kid: str
    public_jwk: dict[str, Any]
    status: str  # current | previous | retired
    # When the key became `previous`; None when the read did not carry it.
    previous_since: datetime | None = None

    def accepted(self, grace_s: float, now: datetime) -> bool:
        if self.status == "current":
            return True
        if self.status != "previous":
            return False
        # Unknown age: accepted, as before grace periods existed.
        return self.previous_since is None or now - self.previous_since <= timedelta(seconds=grace_s)


@dataclass(frozen=True)
class Principal:
    code: str
    role: str  # hospital | insurer
    display_name: str
    line: int | None = None
    delivery_mode: str | None = None  # insurers: simulated | pull
    available: bool = True
    suspended: bool = False
    keys: tuple[EncryptionKeyRecord, ...] = field(default_factory=tuple)

    def accepted_keys(
        self, grace_s: float = DEFAULT_KEY_GRACE_S, now: datetime | None = None
    ) -> tuple[EncryptionKeyRecord, ...]:
        """The current key and any previous key still within its grace period."""
        at = now or datetime.now(UTC)
        return tuple(k for k in self.keys if k.accepted(grace_s, at))

    def accepted_kids(
        self, grace_s: float = DEFAULT_KEY_GRACE_S, now: datetime | None = None
    ) -> frozenset[str]:
        """kids an envelope to this principal may name."""
        return frozenset(k.kid for k in self.accepted_keys(grace_s, now))

    def current_key(self) -> EncryptionKeyRecord | None:
        for k in self.keys:
            if k.status == "current":
                return k
        return None


@dataclass(frozen=True)
class SigningKey:
    principal_code: str
    key_id: str
    secret: bytes
    role: str
    suspended: bool
