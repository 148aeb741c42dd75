"""Checks on what an operator registers for an insurer (docs/protocol.md §10,
§11): delivery mode, endpoint, endpoint CA and public encryption JWKs.

Pure: no I/O. Each refusal is an `InvalidArgument` with a stable reason, and
its message never quotes the value (it may reach a log through an error path).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from iclaim.crypto.envelope import MIN_RSA_BITS, import_jwk
from iclaim.errors import InvalidArgument
from iclaim_hub.registry.model import DELIVERY_GRPC, DELIVERY_MODES, DELIVERY_PULL, DELIVERY_WEBHOOK

# Limits on registered values.
MAX_ENDPOINT_CHARS = 2048
MAX_CA_PEM_BYTES = 64 * 1024
MAX_JWK_BYTES = 16 * 1024
MAX_KID_CHARS = 128

ENDPOINT_INVALID = "ENDPOINT_INVALID"
ENDPOINT_CA_INVALID = "ENDPOINT_CA_INVALID"
DELIVERY_MODE_INVALID = "DELIVERY_MODE_INVALID"
JWK_INVALID = "JWK_INVALID"
JWK_PRIVATE = "JWK_PRIVATE"

# RFC 7518 §6: members that only a private (or symmetric) key has.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# What envelopes (iclaim.crypto.envelope, §1) can seal to.
_ALLOWED_CURVES = {"OKP": frozenset({"X25519"}), "EC": frozenset({"P-256"})}

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
_KID_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces


def _endpoint_error(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=ENDPOINT_INVALID)


def check_delivery_mode(mode: str) -> str:
    if mode not in DELIVERY_MODES:
        raise InvalidArgument("delivery must be pull, grpc or webhook", reason=DELIVERY_MODE_INVALID)
    return mode


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return len(host) <= 253 and _HOSTNAME_RE.fullmatch(host) is not None


def _valid_port(port: str) -> bool:
    return _PORT_RE.fullmatch(port) is not None and 1 <= int(port) <= 65535


def _check_grpc_target(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not _valid_host(host) or not _valid_port(port):
        raise _endpoint_error("a grpc endpoint must be HOST:PORT (e.g. claims.insurer.example:443)")


def _check_webhook_url(endpoint: str) -> None:
    message = "a webhook endpoint must be an https:// URL with a host, without query, fragment or credentials"
    if not endpoint.startswith("https://"):
        raise _endpoint_error(message)
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        raise _endpoint_error(message) from None
    host = parts.hostname or ""
    netloc_host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if (
        not host
        or not _valid_host(netloc_host)
        or port == 0
        # Credentials in a URL would sit in the registry in clear; a query or
        # fragment would make the signed method line (POST <path>) ambiguous.
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or "?" in endpoint
        or "#" in endpoint
    ):
        raise _endpoint_error(message)


def check_endpoint(mode: str, endpoint: str) -> str:
    """grpc: HOST:PORT; webhook: an https:// URL with a host; pull: ''."""
    check_delivery_mode(mode)
    if mode == DELIVERY_PULL:
        if endpoint:
            raise _endpoint_error("a pull insurer has no endpoint")
        return endpoint
    if not endpoint:
        raise _endpoint_error(f"a {mode} insurer needs an endpoint")
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        raise _endpoint_error(f"an endpoint is at most {MAX_ENDPOINT_CHARS} characters")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in endpoint):
        raise _endpoint_error("an endpoint is printable ASCII without spaces")
    if mode == DELIVERY_GRPC:
        _check_grpc_target(endpoint)
    elif mode == DELIVERY_WEBHOOK:
        _check_webhook_url(endpoint)
    return endpoint


def check_ca_pem(pem: str) -> str:
    """'' (system roots) or one or more PEM certificates, and nothing private."""
    if not pem:
        return pem
    if len(pem.encode("utf-8")) > MAX_CA_PEM_BYTES:
        raise InvalidArgument(
            f"the endpoint CA is at most {MAX_CA_PEM_BYTES} bytes", reason=ENDPOINT_CA_INVALID
        )
    # The hub never holds a participant's private key, even by mistake.
    if "PRIVATE KEY" in pem:
        raise InvalidArgument(
            "the endpoint CA file holds a private key; register the CA certificate only",
            reason=ENDPOINT_CA_INVALID,
        )
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("utf-8"))
    except ValueError:
        certs = []
    if not certs:
        raise InvalidArgument("the endpoint CA is not a PEM certificate", reason=ENDPOINT_CA_INVALID)
    return pem


def _jwk_object(jwk: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(jwk, str):
        if len(jwk.encode("utf-8")) > MAX_JWK_BYTES:
            raise InvalidArgument(f"a JWK is at most {MAX_JWK_BYTES} bytes", reason=JWK_INVALID)
        try:
            data = json.loads(jwk)
        except (ValueError, RecursionError):
            raise InvalidArgument("the JWK is not JSON", reason=JWK_INVALID) from None
    else:
        data = jwk
    if not isinstance(data, dict):
        raise InvalidArgument("a JWK is one JSON object (one key)", reason=JWK_INVALID)
    if len(json.dumps(data)) > MAX_JWK_BYTES:
        raise InvalidArgument(f"a JWK is at most {MAX_JWK_BYTES} bytes", reason=JWK_INVALID)
    return data


def check_public_jwk(jwk: dict[str, Any] | str) -> dict[str, Any]:
    """One public encryption key with a `kid` that envelopes can seal to:
    X25519 (OKP), P-256 (EC) or RSA of at least 2048 bits. Returns it as a dict."""
    data = _jwk_object(jwk)
    if PRIVATE_JWK_MEMBERS & data.keys():
        raise InvalidArgument(
            "the JWK holds private key material; register the public key only", reason=JWK_PRIVATE
        )
    kid = data.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS or not _KID_RE.fullmatch(kid):
        raise InvalidArgument(
            f"the JWK needs a kid (1-{MAX_KID_CHARS} printable characters)", reason=JWK_INVALID
        )
    kty = data.get("kty")
    if kty in _ALLOWED_CURVES and data.get("crv") not in _ALLOWED_CURVES[kty]:
        raise InvalidArgument("the JWK must be X25519 (OKP) or P-256 (EC)", reason=JWK_INVALID)
    if kty not in ("OKP", "EC", "RSA"):
        raise InvalidArgument("the JWK must be OKP (X25519), EC (P-256) or RSA", reason=JWK_INVALID)
    if data.get("use", "enc") != "enc":
        raise InvalidArgument("the JWK's use must be enc", reason=JWK_INVALID)
    try:
        key = import_jwk(data)
    except Exception:  # EnvelopeError, or joserfc's own errors for malformed members
        raise InvalidArgument("the JWK is not a valid key", reason=JWK_INVALID) from None
    if key.is_private:
        raise InvalidArgument(
            "the JWK holds private key material; register the public key only", reason=JWK_PRIVATE
        )
    raw = key.raw_value
    if isinstance(raw, rsa.RSAPublicKey) and raw.key_size < MIN_RSA_BITS:
        raise InvalidArgument(f"RSA keys must be at least {MIN_RSA_BITS} bits", reason=JWK_INVALID)
    return data
