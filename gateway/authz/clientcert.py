"""Binds a verified TLS client certificate to the signing principal.

Envoy validates the chain against ICLAIM_GATEWAY_CLIENT_CA and hands ext_authz
the URL-encoded PEM (the HTTP check: x-forwarded-client-cert's Cert element;
the gRPC Check: attributes.source.certificate).
A certificate names principals by SAN URI `iclaim:principal/<code>`; without
such URIs, by its subject CN.
"""

from __future__ import annotations

import urllib.parse

from cryptography import x509
from cryptography.x509.oid import NameOID

URI_PREFIX = "iclaim:principal/"
MAX_PEM_CHARS = 64 * 1024


def principals_of(encoded_pem: str) -> frozenset[str]:
    """Principal codes the certificate names; empty when it names none or does
    not parse (Envoy already verified it, so this is defensive)."""
    if not encoded_pem or len(encoded_pem) > MAX_PEM_CHARS:
        return frozenset()
    try:
        cert = x509.load_pem_x509_certificate(urllib.parse.unquote(encoded_pem).encode())
    except ValueError:
        return frozenset()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [
            u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URI_PREFIX)
        ]
    except (x509.ExtensionNotFound, ValueError):
        uris = []
    if uris:
        return frozenset(u[len(URI_PREFIX) :] for u in uris)
    try:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return frozenset()
    return frozenset(str(a.value) for a in cns)
