"""Registry records: principals and their public keys (no storage code here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EncryptionKeyRecord:
    kid: str
    public_jwk: dict[str, Any]
    status: str  # current | previous | retired


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

    def accepted_kids(self) -> frozenset[str]:
        """kids an envelope to this principal may name: the current and previous keys."""
        return frozenset(k.kid for k in self.keys if k.status in ("current", "previous"))

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
