"""Envoy access-log lines (iclaim_hub.common.access_log.ENVOY_JSON_FORMAT) -> AuditEntry.

Pure: no I/O. The gateway already logs no caller text (route names, verified
or hub-form values, keyed hashes); this checks every value again and keeps
only those of their expected form (PDPA: audit rows cannot be deleted), so a
misconfigured or older Envoy cannot put a path, a claimed client or a
caller's transaction id into the log.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from iclaim.audit.entry import AuditEntry
from iclaim_hub.common.access_log import (
    HUB_TRANSACTION_RE,
    OPEN_SERVICES,
    PSEUDONYM_RE,
    UNKNOWN_ROUTE,
)
from services.audit_log.events import (
    DESTINATION_RE,
    GRPC_CODE_NAMES,
    PRINCIPAL_RE,
    PUBLIC_ROUTES,
    REASON_RE,
    SHA256_RE,
    UNVERIFIED_PREFIX,
    valid_ip,
)

# Envoy's x-request-id (a UUID it generates for callers at the edge).
_REQUEST_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class MalformedLine(ValueError):
    pass


def _text(doc: dict[str, Any], key: str) -> str:
    v = doc.get(key)
    if v is None or v == "-":
        return ""
    return v if isinstance(v, str) else str(v)


def _int(doc: dict[str, Any], key: str) -> int:
    v = doc.get(key)
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return max(v, 0)
    if isinstance(v, float):
        return max(int(v), 0)
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return 0


def _time_us(raw: Any) -> int:
    try:
        return int(Decimal(str(raw)) * 1_000_000)
    except (InvalidOperation, ValueError) as exc:
        raise MalformedLine("start_time") from exc


def _grpc_code(raw: Any) -> str:
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(GRPC_CODE_NAMES):
        return GRPC_CODE_NAMES[raw]
    if isinstance(raw, str) and raw in GRPC_CODE_NAMES:
        return raw
    return "UNKNOWN"


def _keep(value: str, pattern: Any) -> str:
    return value if pattern.fullmatch(value) else ""


def _route(value: str) -> str:
    """`<Envoy route name> <route hash or ->` -> a public method, `/<open
    service>/*`, or `unknown-route[:h:…]`; never a path as the caller wrote it."""
    name, _, tag = value.partition(" ")
    if tag and tag != "-":  # the auth service hashed a path it does not know
        return UNKNOWN_ROUTE + (":" + tag if PSEUDONYM_RE.fullmatch(tag) else "")
    if name in PUBLIC_ROUTES:
        return name
    if name in OPEN_SERVICES:
        return f"/{name}/*"
    return UNKNOWN_ROUTE if name else ""


def _origin(doc: dict[str, Any]) -> str:
    principal = _text(doc, "principal")
    if PRINCIPAL_RE.fullmatch(principal):
        return principal
    # Claimed, not verified: only as the auth service's keyed hash.
    return UNVERIFIED_PREFIX + _keep(_text(doc, "claimed_client"), PSEUDONYM_RE)


def parse_json_line(line: bytes) -> dict[str, Any]:
    """A JSON object; if a crashed writer left a fragment in front of the
    object (no newline), recovers the object after it."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        doc = None
        pos = line.rfind(b'{"')
        while pos > 0 and doc is None:
            try:
                doc = json.loads(line[pos:])
            except (ValueError, UnicodeDecodeError):
                pos = line.rfind(b'{"', 0, pos)
    if not isinstance(doc, dict) or "start_time" not in doc:
        raise MalformedLine("not an access-log object")
    return doc


def entry_from_line(line: bytes) -> AuditEntry:
    doc = parse_json_line(line)
    event_id = _text(doc, "event_id")
    if not _REQUEST_ID_RE.fullmatch(event_id):
        # No request id of Envoy's making: the line itself identifies the
        # event, so a re-read of the same line still deduplicates.
        event_id = "gwline-" + hashlib.sha256(line).hexdigest()[:40]
    source = _text(doc, "source_address")
    cluster = _text(doc, "upstream_cluster")
    return AuditEntry(
        event_id=event_id,
        kind="GATEWAY_CALL",
        origin_principal=_origin(doc),
        source_address=source if valid_ip(source) else "",
        destination=cluster if DESTINATION_RE.fullmatch(cluster) else "gateway",
        route=_route(_text(doc, "route")),
        occurred_at_us=_time_us(doc.get("start_time")),
        size_bytes=_int(doc, "request_bytes") + _int(doc, "response_bytes"),
        duration_ms=_int(doc, "duration_ms"),
        service_type="gateway",
        outcome_code=_grpc_code(doc.get("grpc_status")),
        outcome_reason=_keep(_text(doc, "reason_trailer") or _text(doc, "reason_header"), REASON_RE),
        # Only an id of the form the hub issues (the router's trailer, or the
        # auth service's header, which it sets for no other form).
        transaction_id=_keep(
            _text(doc, "req_transaction_id") or _text(doc, "resp_transaction_id"), HUB_TRANSACTION_RE
        ),
        envelope_sha256=_keep(_text(doc, "envelope_sha256"), SHA256_RE),
    )
