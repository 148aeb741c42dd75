"""Dev TLS material for the gateway (gateway/tls.py)."""
from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.tls import ensure_dev_tls


def _cert(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_generates_a_p256_ca_and_a_server_cert_for_loopback(tmp_path: Path) -> None:
    paths = ensure_dev_tls(tmp_path)
    ca, server = _cert(paths.ca_cert), _cert(paths.server_cert)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in (paths.server_key, tmp_path / "tls" / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_reuses_valid_material(tmp_path: Path) -> None:
    first = ensure_dev_tls(tmp_path)
    before = (first.ca_cert.read_bytes(), first.server_cert.read_bytes())
    second = ensure_dev_tls(tmp_path)
    assert (second.ca_cert.read_bytes(), second.server_cert.read_bytes()) == before


def test_replaces_a_server_cert_that_is_broken_or_not_for_these_names(tmp_path: Path) -> None:
    paths = ensure_dev_tls(tmp_path)
    ca_pem = paths.ca_cert.read_bytes()
    paths.server_cert.write_text("garbage")
    ensure_dev_tls(tmp_path)
    server = _cert(paths.server_cert)
    server.verify_directly_issued_by(_cert(paths.ca_cert))
    assert paths.ca_cert.read_bytes() == ca_pem  # the CA clients trust is kept
    ensure_dev_tls(tmp_path, dns_names=("localhost", "gateway.local"))
    san = _cert(paths.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "gateway.local" in san.get_values_for_type(x509.DNSName)
    assert _cert(paths.server_cert).not_valid_after_utc > dt.datetime.now(dt.UTC)
