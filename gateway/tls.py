"""Development TLS for the gateway: a local CA (ECDSA P-256) and a server
certificate for 127.0.0.1/localhost, generated at run time and reused while
valid. Never used in production, where certificates come from the platform.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=7)
DEFAULT_DNS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class TlsPaths:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def ensure_dev_tls(
    state_dir: Path,
    *,
    dns_names: tuple[str, ...] = DEFAULT_DNS,
    ip_addresses: tuple[str, ...] = DEFAULT_IPS,
) -> TlsPaths:
    """Returns (ca_cert, server_cert, server_key) under `state_dir`/tls,
    creating or renewing them as needed. Private keys are mode 600."""
    return ensure_dev_server_cert(
        state_dir, "server", "iClaim dev gateway", dns_names=dns_names, ip_addresses=ip_addresses
    )


def ensure_dev_server_cert(
    state_dir: Path,
    stem: str,
    common_name: str,
    *,
    dns_names: tuple[str, ...] = DEFAULT_DNS,
    ip_addresses: tuple[str, ...] = DEFAULT_IPS,
) -> TlsPaths:
    """A server certificate `<stem>.pem` / `<stem>-key.pem` issued by the dev CA
    under `state_dir`/tls (the CA is created if missing), reused while valid.
    Each server gets its own key: the dev sandbox insurers never hold the
    gateway's."""
    folder = Path(state_dir) / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert_p, ca_key_p = folder / "ca.pem", folder / "ca-key.pem"
    cert_p, key_p = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    paths = TlsPaths(ca_cert_p, cert_p, key_p)

    ca = _load_ca(ca_cert_p, ca_key_p)
    if ca is None:
        ca = _new_ca()
        _write_key(ca_key_p, ca[1])
        _write(ca_cert_p, ca[0].public_bytes(serialization.Encoding.PEM))
    elif _server_ok(cert_p, key_p, ca[0], dns_names, ip_addresses):
        return paths
    cert, key = _new_server_cert(ca[0], ca[1], dns_names, ip_addresses, common_name)
    _write_key(key_p, key)
    _write(cert_p, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fresh(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, pub) == key.public_key().public_bytes(enc, pub)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _load_ca(cert_p: Path, key_p: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
        key = _load_key(key_p)
    except (OSError, ValueError):
        return None
    if key is None or not _fresh(cert) or not _same_key(cert, key):
        return None
    return cert, key


def _server_ok(
    cert_p: Path,
    key_p: Path,
    ca: x509.Certificate,
    dns_names: tuple[str, ...],
    ips: tuple[str, ...],
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
        key = _load_key(key_p)
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return (
        key is not None
        and _fresh(cert)
        and _same_key(cert, key)
        and set(dns_names) <= have_dns
        and set(ips) <= have_ips
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    """Every certificate here: a fresh serial, valid from five minutes ago
    (clock skew between the issuer and its peers) for `days`."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a server key signs its handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_ca(
    common_name: str = "iClaim dev CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iClaim development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        _builder(name, name, key, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: tuple[str, ...],
    ips: tuple[str, ...],
    common_name: str = "iClaim dev gateway",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(subject, ca_cert.subject, key, SERVER_DAYS)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, 0o600)


# --- mutual TLS (dev): a separate client CA and per-principal client certs -------------
CLIENT_DAYS = 397
PRINCIPAL_URI_PREFIX = "iclaim:principal/"


@dataclass(frozen=True)
class ClientCertPaths:
    cert: Path
    key: Path


def ensure_dev_client_ca(state_dir: Path) -> Path:
    """The dev CA that issues hospitals' client certificates (point
    ICLAIM_GATEWAY_CLIENT_CA at the returned PEM); separate from the server CA."""
    folder = Path(state_dir) / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    cert_p, key_p = folder / "client-ca.pem", folder / "client-ca-key.pem"
    if _load_ca(cert_p, key_p) is None:
        cert, key = _new_ca(common_name="iClaim dev client CA")
        _write_key(key_p, key)
        _write(cert_p, cert.public_bytes(serialization.Encoding.PEM))
    return cert_p


def issue_dev_client_cert(
    state_dir: Path,
    principal: str,
    *,
    common_name: str | None = None,
    san_uri: bool = True,
    name: str | None = None,
) -> ClientCertPaths:
    """Issues a client certificate for `principal` from the dev client CA:
    subject CN = `common_name` (default the principal code) and, unless
    san_uri is False, SAN URI iclaim:principal/<principal>."""
    ca_cert_p = ensure_dev_client_ca(state_dir)
    folder = ca_cert_p.parent
    loaded = _load_ca(ca_cert_p, folder / "client-ca-key.pem")
    assert loaded is not None
    ca_cert, ca_key = loaded
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or principal)])
    builder = (
        _builder(subject, ca_cert.subject, key, CLIENT_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
    )
    if san_uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(PRINCIPAL_URI_PREFIX + principal)]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    stem = name or f"client-{principal}"
    paths = ClientCertPaths(folder / f"{stem}.pem", folder / f"{stem}-key.pem")
    _write_key(paths.key, key)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths
