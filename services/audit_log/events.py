"""Append input validation (PDPA: only traffic data of its expected form).
Pure: no grpc, asyncpg or I/O."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from iclaim.audit.entry import AuditEntry
from iclaim.public_api import public_methods
from iclaim_hub.common.access_log import OPEN_SERVICES, PSEUDONYM_RE, UNKNOWN_ROUTE

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
# (Checked with fullmatch: `$` alone would let a trailing newline through.)
PRINCIPAL_RE = re.compile(r"^[A-Z0-9_]{2,16}$")
UNVERIFIED_PREFIX = "unverified:"
# A claimed client is caller text even when well-formed: only its keyed hash.
UNVERIFIED_RE = re.compile(rf"^{UNVERIFIED_PREFIX}({PSEUDONYM_RE.pattern})?$")
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
DESTINATION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Routes are a closed set: the public methods, an open service (any of its
# methods), the hub's internal methods (its own producers), or an unknown path
# as a fixed token with its keyed hash. A path a caller wrote never fits.
PUBLIC_ROUTES = frozenset(public_methods())
OPEN_ROUTES = frozenset(f"/{s}/*" for s in OPEN_SERVICES)
INTERNAL_ROUTE_RE = re.compile(r"^/iclaim_hub\.internal\.v1\.[A-Z][A-Za-z0-9]{0,63}/[A-Z][A-Za-z0-9]{0,63}$")
UNKNOWN_ROUTE_RE = re.compile(rf"^{UNKNOWN_ROUTE}(:{PSEUDONYM_RE.pattern})?$")
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
    return bool(PRINCIPAL_RE.fullmatch(value))


def valid_origin(value: str) -> bool:
    return bool(PRINCIPAL_RE.fullmatch(value) or UNVERIFIED_RE.fullmatch(value))


def valid_route(value: str) -> bool:
    return (
        value in PUBLIC_ROUTES
        or value in OPEN_ROUTES
        or bool(INTERNAL_ROUTE_RE.fullmatch(value) or UNKNOWN_ROUTE_RE.fullmatch(value))
    )


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
        ("event_id", bool(EVENT_ID_RE.fullmatch(e.event_id))),
        ("kind", e.kind in KINDS),
        ("origin_principal", valid_origin(e.origin_principal)),
        ("source_address", e.source_address == "" or valid_ip(e.source_address)),
        ("destination", bool(DESTINATION_RE.fullmatch(e.destination))),
        ("route", e.route == "" or valid_route(e.route)),
        ("occurred_at", MIN_TIME_US <= e.occurred_at_us <= now_us + MAX_FUTURE_US),
        ("size_bytes", 0 <= e.size_bytes <= MAX_SIZE_BYTES),
        ("duration_ms", 0 <= e.duration_ms <= MAX_DURATION_MS),
        ("service_type", bool(SERVICE_TYPE_RE.fullmatch(e.service_type))),
        ("outcome_code", e.outcome_code in GRPC_CODE_NAMES),
        ("outcome_reason", e.outcome_reason == "" or bool(REASON_RE.fullmatch(e.outcome_reason))),
        ("transaction_id", e.transaction_id == "" or bool(TRANSACTION_RE.fullmatch(e.transaction_id))),
        ("envelope_sha256", e.envelope_sha256 == "" or bool(SHA256_RE.fullmatch(e.envelope_sha256))),
    ]
    for name, ok in checks:
        if not ok:
            return Invalid(name)
    return None
