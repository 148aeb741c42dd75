"""Envoy access-log lines (iclaim_hub.common.access_log.ENVOY_JSON_FORMAT) -> AuditEntry.

Pure: no I/O. Attacker-controlled values (claimed client, path, reason,
transaction id) that are not of their expected form are dropped, never
stored, so nothing free-form reaches the log.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal, InvalidOperation
from typing import Any

from iclaim.audit.entry import AuditEntry
from services.audit_log.events import (
    DESTINATION_RE,
    EVENT_ID_RE,
    GRPC_CODE_NAMES,
    PRINCIPAL_RE,
    REASON_RE,
    ROUTE_RE,
    SHA256_RE,
    TRANSACTION_RE,
    UNVERIFIED_PREFIX,
    valid_ip,
)


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
    return value if pattern.match(value) else ""


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
    if not EVENT_ID_RE.match(event_id):
        # No usable request id: the line itself identifies the event, so a
        # re-read of the same line still deduplicates.
        event_id = "gwline-" + hashlib.sha256(line).hexdigest()[:40]
    principal = _text(doc, "principal")
    if PRINCIPAL_RE.match(principal):
        origin = principal
    else:
        origin = UNVERIFIED_PREFIX + _keep(_text(doc, "claimed_client"), PRINCIPAL_RE)
    source = _text(doc, "source_address")
    cluster = _text(doc, "upstream_cluster")
    return AuditEntry(
        event_id=event_id,
        kind="GATEWAY_CALL",
        origin_principal=origin,
        source_address=source if valid_ip(source) else "",
        destination=cluster if DESTINATION_RE.match(cluster) else "gateway",
        route=_keep(_text(doc, "route"), ROUTE_RE),
        occurred_at_us=_time_us(doc.get("start_time")),
        size_bytes=_int(doc, "request_bytes") + _int(doc, "response_bytes"),
        duration_ms=_int(doc, "duration_ms"),
        service_type="gateway",
        outcome_code=_grpc_code(doc.get("grpc_status")),
        outcome_reason=_keep(_text(doc, "reason_trailer") or _text(doc, "reason_header"), REASON_RE),
        transaction_id=_keep(
            _text(doc, "req_transaction_id") or _text(doc, "resp_transaction_id"), TRANSACTION_RE
        ),
        envelope_sha256=_keep(_text(doc, "envelope_sha256"), SHA256_RE),
    )
