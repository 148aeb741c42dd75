"""The gateway's access log: the contract between Envoy (which writes one JSON
object per call, accepted or rejected) and audit_log (which ingests it).

Traffic data only; Envoy is told to log exactly these fields, nothing else.
"""

from __future__ import annotations

# Headers set by the gateway's auth service after it verified a call.
PRINCIPAL_HEADER = "x-iclaim-principal"
ROLE_HEADER = "x-iclaim-role"
TRANSACTION_HEADER = "x-iclaim-transaction-id"
ENVELOPE_SHA_HEADER = "x-iclaim-envelope-sha256"
REASON_HEADER = "x-iclaim-reason"

# field -> Envoy substitution command (typed JSON: numbers stay numbers).
ENVOY_JSON_FORMAT: dict[str, str] = {
    "event_id": "%REQ(X-REQUEST-ID)%",
    "start_time": "%START_TIME(%s.%3f)%",
    "principal": "%REQ(X-ICLAIM-PRINCIPAL)%",
    "claimed_client": "%REQ(X-ICLAIM-CLIENT)%",
    "source_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "route": "%REQ(:PATH)%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "request_bytes": "%BYTES_RECEIVED%",
    "response_bytes": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "grpc_status": "%GRPC_STATUS_NUMBER%",
    "reason_trailer": "%TRAILER(X-ICLAIM-REASON)%",
    "reason_header": "%RESP(X-ICLAIM-REASON)%",
    "req_transaction_id": "%REQ(X-ICLAIM-TRANSACTION-ID)%",
    "resp_transaction_id": "%TRAILER(X-ICLAIM-TRANSACTION-ID)%",
    "envelope_sha256": "%REQ(X-ICLAIM-ENVELOPE-SHA256)%",
}
