"""Message size limits both sides of the public API keep (docs/protocol.md §4).

One request limit for everyone: Envoy and the gateway's auth service
(gateway/envoy.py, gateway/authz/frame.py), every service's server
(iclaim_hub/common/server.py) and every client (CLIENT_OPTIONS), so a request
the gateway lets through is never refused further in, and the SDK never sends
one the gateway would refuse.
"""

from __future__ import annotations

# A 1 MiB envelope (§4) plus 64 KiB for the other fields of the request.
MAX_REQUEST_BYTES = 1024 * 1024 + 64 * 1024

# Responses may be larger than requests: a page of ListClaims or PullClaims
# carries several envelopes. Servers send and clients accept up to 8 MiB
# (as before); pages are bounded by count, not yet by bytes.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024

CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
]
