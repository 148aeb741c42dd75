"""The one gRPC length-prefixed frame of a unary or server-streaming request.

Envoy hands the authz service the raw HTTP/2 body: a 1-byte compressed flag,
a 4-byte big-endian length, then the serialized message. Signatures cover the
message bytes only (PROTOCOL.md §3), so the frame must be exact.
"""

from __future__ import annotations

from iclaim.errors import InvalidArgument, ResourceExhausted
from iclaim.limits import MAX_REQUEST_BYTES

PREFIX_BYTES = 5
# The one request limit every service and client keeps (a 1 MiB envelope, §4,
# plus 64 KiB for the other fields).
MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES
# What the auth service itself must receive: Envoy's CheckRequest wraps the
# framed body (at most MAX_MESSAGE_BYTES + PREFIX_BYTES + 1, gateway/envoy.py)
# with the request headers (32 KiB at most), the client certificate as
# URL-encoded PEM (BoringSSL caps a chain at 100 KiB) and a few attributes.
MAX_CHECK_REQUEST_BYTES = MAX_MESSAGE_BYTES + 512 * 1024


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
