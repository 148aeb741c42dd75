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
    san = _cert(paths.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gateway.local" in san.get_values_for_type(x509.DNSName)
    assert _cert(paths.server_cert).not_valid_after_utc > dt.datetime.now(dt.UTC)


def test_dev_client_certs_name_their_principal(tmp_path: Path) -> None:
    import urllib.parse

    from gateway.authz.clientcert import principals_of
    from gateway.tls import ensure_dev_client_ca, issue_dev_client_cert

    ca = _cert(ensure_dev_client_ca(tmp_path))
    assert ca != _cert(ensure_dev_tls(tmp_path).ca_cert)  # separate from the server CA
    with_uri = issue_dev_client_cert(tmp_path, "10670")
    cert = _cert(with_uri.cert)
    cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE(with_uri.key.stat().st_mode) == 0o600
    pem = urllib.parse.quote(with_uri.cert.read_text())  # as Envoy sends it
    assert principals_of(pem) == frozenset({"10670"})
    # The SAN URI wins over the CN; without a URI, the CN names the principal.
    mixed = issue_dev_client_cert(tmp_path, "10670", common_name="AIA", name="mixed")
    assert principals_of(urllib.parse.quote(mixed.cert.read_text())) == frozenset({"10670"})
    cn_only = issue_dev_client_cert(tmp_path, "AIA", san_uri=False, name="cn")
    assert principals_of(urllib.parse.quote(cn_only.cert.read_text())) == frozenset({"AIA"})
    assert principals_of("garbage") == frozenset()
    assert principals_of("x" * 100_000) == frozenset()
