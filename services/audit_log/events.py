"""Append input validation (PDPA: only traffic data of its expected form).
Pure: no grpc, asyncpg or I/O."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from iclaim.audit.entry import AuditEntry

KINDS = ("GATEWAY_CALL", "CLAIM_STATE_CHANGE")
GRPC_CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)  # index = numeric gRPC code

# Every field has a closed form: codes, ids, addresses, numbers. Nothing here
# can carry a name, a citizen id, a diagnosis or a policy number as free text.
PRINCIPAL_RE = re.compile(r"^[A-Z0-9_]{2,16}$")
UNVERIFIED_PREFIX = "unverified:"
UNVERIFIED_RE = re.compile(r"^unverified:[A-Z0-9_]{0,16}$")
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
DESTINATION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
ROUTE_RE = re.compile(r"^/[A-Za-z_][A-Za-z0-9_.]{0,127}/[A-Za-z_][A-Za-z0-9_]{0,63}$")
SERVICE_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
REASON_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
TRANSACTION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
HOLD_REFERENCE_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")

MIN_TIME_US = 1_577_836_800 * 1_000_000  # 2020-01-01
MAX_FUTURE_US = 3600 * 1_000_000  # producers share our clock; an hour of slack
MAX_SIZE_BYTES = 1 << 40
MAX_DURATION_MS = 7 * 86_400_000


@dataclass(frozen=True)
class Invalid:
    field: str


def valid_principal(value: str) -> bool:
    return bool(PRINCIPAL_RE.match(value))


def valid_origin(value: str) -> bool:
    return bool(PRINCIPAL_RE.match(value) or UNVERIFIED_RE.match(value))


def valid_ip(value: str) -> bool:
    if len(value) > 45:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_entry(e: AuditEntry, now_us: int) -> Invalid | None:
    """The first field not of its expected form, or None."""
    checks: list[tuple[str, bool]] = [
        ("event_id", bool(EVENT_ID_RE.match(e.event_id))),
        ("kind", e.kind in KINDS),
        ("origin_principal", valid_origin(e.origin_principal)),
        ("source_address", e.source_address == "" or valid_ip(e.source_address)),
        ("destination", bool(DESTINATION_RE.match(e.destination))),
        ("route", e.route == "" or bool(ROUTE_RE.match(e.route))),
        ("occurred_at", MIN_TIME_US <= e.occurred_at_us <= now_us + MAX_FUTURE_US),
        ("size_bytes", 0 <= e.size_bytes <= MAX_SIZE_BYTES),
        ("duration_ms", 0 <= e.duration_ms <= MAX_DURATION_MS),
        ("service_type", bool(SERVICE_TYPE_RE.match(e.service_type))),
        ("outcome_code", e.outcome_code in GRPC_CODE_NAMES),
        ("outcome_reason", e.outcome_reason == "" or bool(REASON_RE.match(e.outcome_reason))),
        ("transaction_id", e.transaction_id == "" or bool(TRANSACTION_RE.match(e.transaction_id))),
        ("envelope_sha256", e.envelope_sha256 == "" or bool(SHA256_RE.match(e.envelope_sha256))),
    ]
    for name, ok in checks:
        if not ok:
            return Invalid(name)
    return None
