"""End-to-end envelopes (PROTOCOL.md §4): JWE compact, ECDH-ES+A256KW / A256GCM.

`parse_protected_header` needs no key: it is all the clearinghouse ever reads.
`seal` / `open_envelope` are for the ends (hospital SDK, insurers).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.registry import HeaderParameter

from iclaim.crypto.signing import b64url_decode

MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_PROTECTED_HEADER_BYTES = 4096
ALLOWED_ALGS = frozenset({"ECDH-ES+A256KW", "RSA-OAEP-256"})
ALLOWED_ENCS = frozenset({"A256GCM"})
CONTENT_TYPE = "application/fhir+json"

H_SENDER = "x-iclaim-sender"
H_RECIPIENT = "x-iclaim-recipient"
H_CLAIM_REF = "x-iclaim-claim-ref"
H_AMOUNT = "x-iclaim-amount-satang"
H_IAT = "x-iclaim-iat"
PRIVATE_HEADERS = (H_SENDER, H_RECIPIENT, H_CLAIM_REF, H_AMOUNT, H_IAT)
CLAIM_REF_MAX = 64


class EnvelopeError(ValueError):
    """A typed envelope problem; `reason` is the stable UPPER_SNAKE code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ProtectedHeader:
    alg: str
    enc: str
    kid: str
    cty: str
    sender: str
    recipient: str
    claim_ref: str
    amount_satang: int
    iat: int


def sha256_hex(envelope: str) -> str:
    return hashlib.sha256(envelope.encode("utf-8")).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_protected_header(envelope: str) -> ProtectedHeader:
    """Reads and checks the protected header only; never touches the ciphertext."""
    if len(envelope.encode("utf-8")) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("ENVELOPE_TOO_LARGE", f"envelope exceeds {MAX_ENVELOPE_BYTES} bytes")
    parts = envelope.split(".")
    if len(parts) != 5:
        raise EnvelopeError("ENVELOPE_MALFORMED", "envelope is not five dot-separated parts")
    if not parts[0] or len(parts[0]) > MAX_PROTECTED_HEADER_BYTES:
        raise EnvelopeError("ENVELOPE_MALFORMED", "protected header missing or too large")
    for part in parts:
        try:
            b64url_decode(part)
        except ValueError:
            raise EnvelopeError("ENVELOPE_MALFORMED", "envelope part is not base64url") from None
    try:
        header = json.loads(b64url_decode(parts[0]))
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("ENVELOPE_MALFORMED", "protected header is not JSON") from None
    if not isinstance(header, dict):
        raise EnvelopeError("ENVELOPE_MALFORMED", "protected header is not a JSON object")
    if "zip" in header:
        raise EnvelopeError("ENVELOPE_ZIP_FORBIDDEN", "zip is forbidden")
    if header.get("alg") not in ALLOWED_ALGS:
        raise EnvelopeError("ENVELOPE_ALG_FORBIDDEN", "alg is not allowed")
    if header.get("enc") not in ALLOWED_ENCS:
        raise EnvelopeError("ENVELOPE_ALG_FORBIDDEN", "enc is not allowed")
    if "crit" in header:
        raise EnvelopeError("ENVELOPE_MALFORMED", "crit is not supported")
    for name in ("kid", "cty", H_SENDER, H_RECIPIENT, H_CLAIM_REF):
        value = header.get(name)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise EnvelopeError("ENVELOPE_HEADER_MISSING", f"protected header {name} missing")
    for name in (H_AMOUNT, H_IAT):
        value = header.get(name)
        if not _is_int(value) or not 0 <= value < 2**63:
            raise EnvelopeError("ENVELOPE_HEADER_MISSING", f"protected header {name} missing")
    if header["cty"] != CONTENT_TYPE:
        raise EnvelopeError("ENVELOPE_MALFORMED", f"cty must be {CONTENT_TYPE}")
    return ProtectedHeader(
        alg=header["alg"],
        enc=header["enc"],
        kid=header["kid"],
        cty=header["cty"],
        sender=header[H_SENDER],
        recipient=header[H_RECIPIENT],
        claim_ref=header[H_CLAIM_REF],
        amount_satang=header[H_AMOUNT],
        iat=header[H_IAT],
    )


def _registry() -> jwe.JWERegistry:
    extra = {
        H_SENDER: HeaderParameter("iClaim sender", "str", required=True),
        H_RECIPIENT: HeaderParameter("iClaim recipient", "str", required=True),
        H_CLAIM_REF: HeaderParameter("iClaim claim reference", "str", required=True),
        H_AMOUNT: HeaderParameter("iClaim amount in satang", "int", required=True),
        H_IAT: HeaderParameter("iClaim sealed-at", "int", required=True),
    }
    registry = jwe.JWERegistry(header_registry=extra, algorithms=[*ALLOWED_ALGS, *ALLOWED_ENCS])
    registry.max_ciphertext_length = MAX_ENVELOPE_BYTES
    registry.max_protected_header_length = MAX_PROTECTED_HEADER_BYTES
    return registry


_REGISTRY = _registry()

Key = OKPKey | ECKey | RSAKey


def import_jwk(jwk: dict[str, Any] | str) -> Key:
    data = json.loads(jwk) if isinstance(jwk, str) else jwk
    kty = data.get("kty")
    if kty == "OKP":
        return OKPKey.import_key(data)
    if kty == "EC":
        return ECKey.import_key(data)
    if kty == "RSA":
        return RSAKey.import_key(data)
    raise EnvelopeError("KEY_UNSUPPORTED", f"unsupported key type {kty!r}")


def generate_encryption_key(kid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fresh X25519 key pair as (private JWK, public JWK)."""
    key = OKPKey.generate_key("X25519", private=True, parameters={"kid": kid, "use": "enc"})
    return dict(key.as_dict(private=True)), dict(key.as_dict(private=False))


def seal(
    plaintext: bytes,
    recipient_jwk: dict[str, Any] | str,
    *,
    sender: str,
    recipient: str,
    claim_ref: str,
    amount_satang: int,
    iat: int | None = None,
) -> str:
    key = import_jwk(recipient_jwk)
    kid = key.kid
    if not kid:
        raise EnvelopeError("KEY_UNSUPPORTED", "recipient key has no kid")
    alg = "RSA-OAEP-256" if isinstance(key, RSAKey) else "ECDH-ES+A256KW"
    header = {
        "alg": alg,
        "enc": "A256GCM",
        "kid": kid,
        "cty": CONTENT_TYPE,
        H_SENDER: sender,
        H_RECIPIENT: recipient,
        H_CLAIM_REF: claim_ref,
        H_AMOUNT: int(amount_satang),
        H_IAT: int(time.time()) if iat is None else iat,
    }
    return jwe.encrypt_compact(header, plaintext, key, registry=_REGISTRY)


def open_envelope(envelope: str, private_jwk: dict[str, Any] | str) -> tuple[ProtectedHeader, bytes]:
    """Checks the header policy, then decrypts; every failure is an EnvelopeError."""
    header = parse_protected_header(envelope)
    try:
        key = import_jwk(private_jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise EnvelopeError("KEY_UNSUPPORTED", "cannot import key") from exc
    if key.kid and header.kid != key.kid:
        raise EnvelopeError("ENVELOPE_KID_UNKNOWN", "envelope is for another key")
    try:
        obj = jwe.decrypt_compact(envelope, key, registry=_REGISTRY)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise EnvelopeError("ENVELOPE_DECRYPT_FAILED", "envelope cannot be opened") from exc
    plaintext = obj.plaintext
    if plaintext is None:
        raise EnvelopeError("ENVELOPE_DECRYPT_FAILED", "envelope has no content")
    return header, plaintext
