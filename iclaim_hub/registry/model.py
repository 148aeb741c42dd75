"""Registry records: principals and their public keys (no storage code here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# How long a rotated-out (`previous`) encryption key stays accepted.
DEFAULT_KEY_GRACE_S = 7 * 24 * 3600.0

# How claims reach an insurer (docs/protocol.md §10), as the registry spells them.
DELIVERY_PULL = "pull"
DELIVERY_GRPC = "grpc"
DELIVERY_WEBHOOK = "webhook"
DELIVERY_MODES = (DELIVERY_PULL, DELIVERY_GRPC, DELIVERY_WEBHOOK)
PUSH_MODES = frozenset({DELIVERY_GRPC, DELIVERY_WEBHOOK})

# §10.5 health, as the registry spells it.
HEALTH_UNKNOWN = "unknown"
HEALTH_HEALTHY = "healthy"
HEALTH_DEGRADED = "degraded"
HEALTH_DOWN = "down"
HEALTH_VALUES = (HEALTH_UNKNOWN, HEALTH_HEALTHY, HEALTH_DEGRADED, HEALTH_DOWN)


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
    delivery_mode: str | None = None  # insurers: pull | grpc | webhook (DELIVERY_MODES)
    available: bool = True
    suspended: bool = False
    keys: tuple[EncryptionKeyRecord, ...] = field(default_factory=tuple)
    # Push insurers: host:port (grpc) or https:// URL (webhook); '' for pull.
    endpoint: str = ""
    # PEM of the CA that signs the insurer's server certificate; '' = system roots.
    endpoint_ca_pem: str = ""
    # The insurer asks for the hub's client certificate on pushes.
    endpoint_mtls: bool = False

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
        """The key to seal new envelopes to (§5 `EncryptionKey.current`). The
        registry keeps one current key per principal (a unique index); were there
        ever two, the newest (keys are listed oldest first) wins."""
        for k in reversed(self.keys):
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


@dataclass(frozen=True)
class EndpointKey:
    """The key the hub signs pushes to an insurer with (§10.1); `secret` is
    32 random bytes, shared with the insurer only."""

    insurer_code: str
    key_id: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class InsurerHealth:
    """An insurer's row of registry.insurer_health. `health` is one of
    HEALTH_VALUES as written by the delivery layer (push insurers);
    `last_pull_at` is written by the router (pull insurers)."""

    insurer_code: str
    health: str
    consecutive_failures: int
    last_pull_at: datetime | None
    updated_at: datetime
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
