"""One audit log entry (traffic data only) and its canonical, hashed form.

leaf hash = SHA-256(0x00 || canonical JSON), where the JSON has sorted keys,
no whitespace, ASCII only, and includes the entry's leaf index and event id:
moving an entry to another position changes its hash.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from iclaim.audit.merkle import leaf_hash

CANONICAL_VERSION = 1


@dataclass(frozen=True)
class AuditEntry:
    event_id: str
    kind: str  # "GATEWAY_CALL" | "CLAIM_STATE_CHANGE"
    origin_principal: str
    source_address: str
    destination: str
    route: str
    occurred_at_us: int  # Unix time, microseconds
    size_bytes: int
    duration_ms: int
    service_type: str
    outcome_code: str
    outcome_reason: str
    transaction_id: str
    envelope_sha256: str


def canonical_bytes(entry: AuditEntry, leaf_index: int) -> bytes:
    doc: dict[str, object] = asdict(entry)
    doc["leaf_index"] = leaf_index
    doc["v"] = CANONICAL_VERSION
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_leaf_hash(entry: AuditEntry, leaf_index: int) -> bytes:
    return leaf_hash(canonical_bytes(entry, leaf_index))
