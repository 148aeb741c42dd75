"""The limits of one DeliverClaims call (router -> adapter), which its caller
keeps to and its server enforces: in one place so the two cannot drift."""

from __future__ import annotations

from iclaim.crypto.envelope import MAX_ENVELOPE_BYTES

MAX_CLAIMS_PER_CALL = 200
# Envelopes a call carries at most: with their other fields well inside every
# service's request limit (iclaim.limits.MAX_REQUEST_BYTES). One claim alone
# always fits: an envelope is at most this size.
MAX_ENVELOPE_BYTES_PER_CALL = MAX_ENVELOPE_BYTES
