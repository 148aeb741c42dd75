"""Message size limits both sides of the public API keep (docs/protocol.md §4)."""

from __future__ import annotations

# Envelopes are capped at 1 MiB (§4); leave room for the other fields.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
