"""End-to-end envelopes (docs/protocol.md §4): JWE compact, ECDH-ES+A256KW / A256GCM.

`parse_protected_header` needs no key: it is all the clearinghouse ever reads.
`seal` / `open_envelope` are for the ends (hospital SDK, insurers).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jwe
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
CLAIM_REF_MAX = 64
MIN_RSA_BITS = 2048


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


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated member could be read one way here and another way elsewhere.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member in protected header")
    return obj


def _policy_header(envelope: str) -> dict[str, Any]:
    """The algorithm policy every envelope must meet, before any key is touched:
    size, five base64url parts, a JSON-object header, no `zip`, no `crit`, and
    only the allowed alg/enc."""
    if not isinstance(envelope, str):
        raise EnvelopeError("ENVELOPE_MALFORMED", "envelope is not a compact JWE string")
    if len(envelope.encode("utf-8", "surrogatepass")) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("ENVELOPE_TOO_LARGE", f"envelope exceeds {MAX_ENVELOPE_BYTES} bytes")
    parts = envelope.split(".")
    if len(parts) != 5:
        raise EnvelopeError("ENVELOPE_MALFORMED", "envelope is not five dot-separated parts")
    if not parts[0] or len(parts[0]) > MAX_PROTECTED_HEADER_BYTES:
        raise EnvelopeError("ENVELOPE_MALFORMED", "protected header missing or too large")
    for part in parts:
        try:
            b64url_decode(part)
        except (ValueError, UnicodeError):
            raise EnvelopeError("ENVELOPE_MALFORMED", "envelope part is not base64url") from None
    try:
        header = json.loads(b64url_decode(parts[0]), object_pairs_hook=_unique_object)
    except (ValueError, UnicodeError, RecursionError):
        raise EnvelopeError("ENVELOPE_MALFORMED", "protected header is not JSON") from None
    if not isinstance(header, dict):
        raise EnvelopeError("ENVELOPE_MALFORMED", "protected header is not a JSON object")
    if "zip" in header:
        raise EnvelopeError("ENVELOPE_ZIP_FORBIDDEN", "zip is forbidden")
    alg, enc = header.get("alg"), header.get("enc")
    # isinstance first: a list or object here is unhashable, not just unknown.
    if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
        raise EnvelopeError("ENVELOPE_ALG_FORBIDDEN", "alg is not allowed")
    if not isinstance(enc, str) or enc not in ALLOWED_ENCS:
        raise EnvelopeError("ENVELOPE_ALG_FORBIDDEN", "enc is not allowed")
    if "crit" in header:
        raise EnvelopeError("ENVELOPE_MALFORMED", "crit is not supported")
    return header


def parse_protected_header(envelope: str) -> ProtectedHeader:
    """Reads and checks the protected header only; never touches the ciphertext."""
    return _iclaim_header(_policy_header(envelope))


def _iclaim_header(header: dict[str, Any]) -> ProtectedHeader:
    """The iClaim members of a header that met the policy (_policy_header)."""
    for name in ("kid", "cty", H_SENDER, H_RECIPIENT, H_CLAIM_REF):
        value = header.get(name)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise EnvelopeError("ENVELOPE_HEADER_MISSING", f"protected header {name} missing")
    for name in (H_AMOUNT, H_IAT):
        value = header.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
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
        # Optional at this level so the generic policy path can open any
        # compact JWE; parse_protected_header makes them required for iClaim.
        H_SENDER: HeaderParameter("iClaim sender", "str"),
        H_RECIPIENT: HeaderParameter("iClaim recipient", "str"),
        H_CLAIM_REF: HeaderParameter("iClaim claim reference", "str"),
        H_AMOUNT: HeaderParameter("iClaim amount in satang", "int"),
        H_IAT: HeaderParameter("iClaim sealed-at", "int"),
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


# Imported long-lived keys (the hospital's public key on each seal, the
# insurer's private key on each open), by a digest of the whole JWK: importing
# costs 15-45 µs each time (an X25519 private key is rebuilt and checked), and a
# changed key (same kid, other material) is a new entry. Ephemeral keys (epk)
# never come through here.
_KEY_CACHE: dict[bytes, Key] = {}
_KEY_CACHE_MAX = 256
_KEY_CACHE_LOCK = threading.Lock()


def _imported(jwk: dict[str, Any] | str) -> Key:
    """import_jwk, remembered: the same JWK gives the same (read-only) key object."""
    try:
        text = jwk if isinstance(jwk, str) else json.dumps(jwk, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):  # not JSON: import_jwk says why
        return import_jwk(jwk)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    key = _KEY_CACHE.get(digest)
    if key is None:
        key = import_jwk(jwk)
        with _KEY_CACHE_LOCK:  # seal/open may run in threads
            if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
                _KEY_CACHE.pop(next(iter(_KEY_CACHE)), None)
            _KEY_CACHE[digest] = key
    return key


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
    key = _imported(recipient_jwk)
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


def _import_private(private_jwk: dict[str, Any] | str | Key) -> Key:
    if isinstance(private_jwk, OKPKey | ECKey | RSAKey):
        key = private_jwk
    else:
        try:
            key = _imported(private_jwk)
        except EnvelopeError:
            raise
        except Exception as exc:  # any malformed JWK is one typed error
            raise EnvelopeError("KEY_UNSUPPORTED", "cannot import key") from exc
    if not key.is_private:
        raise EnvelopeError("KEY_UNSUPPORTED", "a private key is needed to open an envelope")
    if isinstance(key, RSAKey) and (key.private_key is None or key.private_key.key_size < MIN_RSA_BITS):
        raise EnvelopeError("KEY_UNSUPPORTED", f"RSA keys must be at least {MIN_RSA_BITS} bits")
    return key


def ecdh_shared_secret(private_key: dict[str, Any] | str | Key, peer_public_jwk: Any) -> bytes:
    """ECDH as the ECDH-ES path does it, with the checks RFC 7748 §6.1 leaves
    optional made mandatory: the peer key must be on our curve, and a low-order
    X25519 point (all-zero shared secret) is refused rather than used."""
    key = _import_private(private_key)
    if not isinstance(key, OKPKey | ECKey):
        raise EnvelopeError("ENVELOPE_KEY_MISMATCH", "key cannot do ECDH")
    if not isinstance(peer_public_jwk, dict):
        raise EnvelopeError("ENVELOPE_EPK_INVALID", "ephemeral key missing or not a JWK")
    try:
        peer = import_jwk(peer_public_jwk)
    except EnvelopeError:
        raise EnvelopeError("ENVELOPE_EPK_INVALID", "ephemeral key type unsupported") from None
    except Exception as exc:  # off-curve points and bad encodings land here
        raise EnvelopeError("ENVELOPE_EPK_INVALID", "ephemeral key is invalid") from exc
    if type(peer) is not type(key) or peer.get("crv") != key.get("crv"):
        raise EnvelopeError("ENVELOPE_EPK_INVALID", "ephemeral key is on another curve")
    try:
        shared = key.exchange_derive_key(peer)  # type: ignore[arg-type]
    except Exception as exc:  # OpenSSL refuses low-order X25519 points
        raise EnvelopeError("ENVELOPE_EPK_INVALID", "ephemeral key is of low order") from exc
    if not any(shared):
        raise EnvelopeError("ENVELOPE_EPK_INVALID", "ECDH gave an all-zero secret")
    return shared


def decrypt_compact_policy(token: str, private_jwk: dict[str, Any] | str | Key) -> bytes:
    """Opens any compact JWE that meets our algorithm policy (alg, enc, no zip,
    no crit, size), without the iClaim header requirements. open_envelope builds
    on it; every failure is an EnvelopeError, never plaintext."""
    return _decrypt(token, _policy_header(token), private_jwk)


def _decrypt(token: str, header: dict[str, Any], private_jwk: dict[str, Any] | str | Key) -> bytes:
    """decrypt_compact_policy once `header` is _policy_header(token)."""
    key = _import_private(private_jwk)
    wants_rsa = header["alg"] == "RSA-OAEP-256"
    if wants_rsa != isinstance(key, RSAKey) or (isinstance(key, OKPKey) and key.get("crv") != "X25519"):
        raise EnvelopeError("ENVELOPE_KEY_MISMATCH", "key does not fit the envelope's alg")
    kid = header.get("kid")
    if kid is not None and key.kid and kid != key.kid:
        raise EnvelopeError("ENVELOPE_KID_UNKNOWN", "envelope is for another key")
    if not wants_rsa:
        ecdh_shared_secret(key, header.get("epk"))  # typed refusal of a bad epk
    try:
        obj = jwe.decrypt_compact(token, key, registry=_REGISTRY)
    except Exception as exc:  # a crypto boundary: every library failure is one typed error
        raise EnvelopeError("ENVELOPE_DECRYPT_FAILED", "envelope cannot be opened") from exc
    plaintext = obj.plaintext
    if plaintext is None:
        raise EnvelopeError("ENVELOPE_DECRYPT_FAILED", "envelope has no content")
    return plaintext


def open_envelope(envelope: str, private_jwk: dict[str, Any] | str) -> tuple[ProtectedHeader, bytes]:
    """Checks the iClaim header, then decrypts under the shared policy; every
    failure is an EnvelopeError."""
    return open_envelope_with(envelope, lambda _: private_jwk)


def key_for_kid(private_jwks: Sequence[dict[str, Any]], header: ProtectedHeader) -> dict[str, Any]:
    """The private key the envelope names by kid, among a principal's current
    key (first) and its previous ones; the current one otherwise (opening then
    fails with a typed EnvelopeError)."""
    for jwk in private_jwks:
        if jwk.get("kid") == header.kid:
            return jwk
    return private_jwks[0]


def open_envelope_with(
    envelope: str, key_for: Callable[[ProtectedHeader], dict[str, Any] | str]
) -> tuple[ProtectedHeader, bytes]:
    """open_envelope with the private key chosen from the checked header (by
    kid, during a rotation); the header is read and checked once."""
    policy = _policy_header(envelope)
    header = _iclaim_header(policy)
    return header, _decrypt(envelope, policy, key_for(header))
