"""AuditEntry <-> iclaim_hub.internal.v1.AuditEvent, the one mapping every side
of the internal AuditLogService uses (the log service, the access-log shipper,
the operator CLI)."""

from __future__ import annotations

from dataclasses import fields

from google.protobuf import timestamp_pb2

from iclaim.audit.entry import AuditEntry
from iclaim_hub.internal.v1 import audit_log_pb2 as pb

_KIND_TO_NAME = {
    pb.AUDIT_EVENT_KIND_GATEWAY_CALL: "GATEWAY_CALL",
    pb.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE: "CLAIM_STATE_CHANGE",
}
_NAME_TO_KIND = {v: k for k, v in _KIND_TO_NAME.items()}
# The traffic fields an event and an entry share (all but kind and time).
_PLAIN = tuple(f.name for f in fields(AuditEntry) if f.name not in ("kind", "occurred_at_us"))


def entry_of_event(ev: pb.AuditEvent) -> AuditEntry:
    ts = ev.occurred_at
    return AuditEntry(
        kind=_KIND_TO_NAME.get(ev.kind, ""),
        occurred_at_us=ts.seconds * 1_000_000 + ts.nanos // 1000,
        **{name: getattr(ev, name) for name in _PLAIN},
    )


def event_of_entry(e: AuditEntry) -> pb.AuditEvent:
    ts = timestamp_pb2.Timestamp(
        seconds=e.occurred_at_us // 1_000_000, nanos=(e.occurred_at_us % 1_000_000) * 1000
    )
    return pb.AuditEvent(
        kind=_NAME_TO_KIND.get(e.kind, pb.AUDIT_EVENT_KIND_UNSPECIFIED),
        occurred_at=ts,
        **{name: getattr(e, name) for name in _PLAIN},
    )
