"""The gateway's access log: the contract between Envoy (which writes one JSON
object per call, accepted or rejected), the gateway's auth service (which
supplies every value derived from what a caller sent) and audit_log (which
ingests it).

Traffic data only (PDPA: audit rows are kept at least 90 days and cannot be
deleted). Nothing a caller sends is logged as sent: the route is Envoy's own
route name; what the auth service derives from caller input is verified (the
principal), of a form the hub issues (transaction id, envelope digest), or a
keyed hash `h:<32 hex>` (a claimed but unverified client, an unknown path), so
an auditor can correlate equal values without learning them.
"""

from __future__ import annotations

import hashlib
import hmac
import re

# Headers set by the gateway's auth service after it verified a call.
PRINCIPAL_HEADER = "x-iclaim-principal"
ROLE_HEADER = "x-iclaim-role"
TRANSACTION_HEADER = "x-iclaim-transaction-id"
ENVELOPE_SHA_HEADER = "x-iclaim-envelope-sha256"
# The keyed hash of the admitted signed request (request_pseudonym): a replay
# carries its original's, so how often one signed request got through is
# countable from the log without the nonce in it.
REQUEST_HASH_HEADER = "x-iclaim-request"
REASON_HEADER = "x-iclaim-reason"

# Envoy files ext_authz's CheckResponse.dynamic_metadata under the filter's
# name, for allowed and refused calls alike; the auth service puts only keyed
# hashes there.
AUTHZ_METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
CLAIMED_CLIENT_KEY = "claimed_client"  # hash of x-iclaim-client on a refused call
ROUTE_HASH_KEY = "route_hash"  # hash of a path that is no public method

# Unauthenticated by design (§3): health checks and reflection.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

# The forms audit_log accepts for values that started as caller input.
PSEUDONYM_RE = re.compile(r"h:[0-9a-f]{32}")
HUB_TRANSACTION_RE = re.compile(r"txn_[0-9a-f]{28}")  # as claim_router issues them
UNKNOWN_ROUTE = "unknown-route"

_PSEUDONYM_LABEL = b"iclaim/access-log-pseudonym/v1"
_PSEUDONYM_HEX = 32  # 128 bits: no collisions in practice, half the width of a digest


def pseudonym_key(master_key: bytes) -> bytes:
    """The access-log hashing key: derived from ICLAIM_MASTER_KEY under a fixed
    label, so every gateway replica (and an operator holding the master key)
    hashes alike, and the key is useless for anything else."""
    return hmac.new(master_key, _PSEUDONYM_LABEL, hashlib.sha256).digest()


def pseudonym(key: bytes, value: str) -> str:
    """`h:` + truncated HMAC-SHA256 of `value`: equal inputs give equal tokens;
    without the key the token reveals nothing about its input."""
    mac = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return "h:" + mac.hexdigest()[:_PSEUDONYM_HEX]


def request_pseudonym(key: bytes, client: str, nonce: str) -> str:
    """One signed request's token: its client and nonce (§3: a nonce is used
    once per client), hashed under the access-log key."""
    return pseudonym(key, f"{client}\n{nonce}")


_META = AUTHZ_METADATA_NAMESPACE

# field -> Envoy substitution command (typed JSON: numbers stay numbers).
# Deliberately absent: the request path, any caller header (x-iclaim-client,
# user-agent, ...) and any request field.
ENVOY_JSON_FORMAT: dict[str, str] = {
    # Envoy regenerates x-request-id for callers outside the mesh (edge).
    "event_id": "%REQ(X-REQUEST-ID)%",
    "start_time": "%START_TIME(%s.%3f)%",
    # Stripped from the request by Envoy, then set by the auth service.
    "principal": "%REQ(X-ICLAIM-PRINCIPAL)%",
    "claimed_client": f"%DYNAMIC_METADATA({_META}:{CLAIMED_CLIENT_KEY})%",
    "source_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    # "<route name from our config> <route hash, or - for a public method>".
    "route": f"%ROUTE_NAME% %DYNAMIC_METADATA({_META}:{ROUTE_HASH_KEY})%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "request_bytes": "%BYTES_RECEIVED%",
    "response_bytes": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "grpc_status": "%GRPC_STATUS_NUMBER%",
    "reason_trailer": "%TRAILER(X-ICLAIM-REASON)%",
    "reason_header": "%RESP(X-ICLAIM-REASON)%",
    # Set by the auth service only for a hub-issued id; the router's trailer.
    "req_transaction_id": "%REQ(X-ICLAIM-TRANSACTION-ID)%",
    "resp_transaction_id": "%TRAILER(X-ICLAIM-TRANSACTION-ID)%",
    "envelope_sha256": "%REQ(X-ICLAIM-ENVELOPE-SHA256)%",
    # Set by the auth service on admission only (a keyed hash, `h:<32 hex>`).
    "request": "%REQ(X-ICLAIM-REQUEST)%",
}
