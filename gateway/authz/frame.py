"""The one gRPC length-prefixed frame of a unary or server-streaming request.

Envoy hands the authz service the raw HTTP/2 body: a 1-byte compressed flag,
a 4-byte big-endian length, then the serialized message. Signatures cover the
message bytes only (PROTOCOL.md §3), so the frame must be exact.
"""

from __future__ import annotations

from iclaim.errors import InvalidArgument, ResourceExhausted

PREFIX_BYTES = 5
# The envelope may be 1 MiB (§4); the other request fields get 64 KiB.
MAX_MESSAGE_BYTES = 1024 * 1024 + 64 * 1024


def too_large(limit: int) -> ResourceExhausted:
    return ResourceExhausted(f"request message exceeds {limit} bytes", reason="REQUEST_TOO_LARGE")


def malformed(problem: str) -> InvalidArgument:
    return InvalidArgument(f"malformed gRPC request: {problem}", reason="MALFORMED_REQUEST")


def message_bytes(raw_body: bytes, *, partial: bool, max_message_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Returns the message bytes of exactly one uncompressed frame, or raises."""
    if partial:
        # Envoy stopped buffering at its limit: the body is larger than we accept.
        raise too_large(max_message_bytes)
    if len(raw_body) < PREFIX_BYTES:
        raise malformed("missing frame prefix")
    flag = raw_body[0]
    if flag == 1:
        raise malformed("compressed requests are not accepted")
    if flag != 0:
        raise malformed("bad compressed flag")
    length = int.from_bytes(raw_body[1:PREFIX_BYTES], "big")
    if length > max_message_bytes:
        raise too_large(max_message_bytes)
    if len(raw_body) - PREFIX_BYTES != length:
        raise malformed("length prefix does not match the body")
    return raw_body[PREFIX_BYTES:]
