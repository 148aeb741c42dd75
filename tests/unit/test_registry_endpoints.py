"""What an operator may register for an insurer (docs/protocol.md §10, §11;
issue 9 item 7): delivery modes, endpoints, endpoint CAs and public JWKs.
Every refusal is an InvalidArgument with a stable reason."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, OKPKey, RSAKey

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.errors import InvalidArgument
from iclaim_hub.registry.endpoints import (
    MAX_CA_PEM_BYTES,
    MAX_ENDPOINT_CHARS,
    MAX_JWK_BYTES,
    MAX_KID_CHARS,
    check_ca_pem,
    check_delivery_mode,
    check_endpoint,
    check_public_jwk,
)


def reason(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidArgument) as err:
        call(*args)
    return err.value.reason


@pytest.mark.parametrize(
    ("mode", "endpoint"),
    [
        ("grpc", "claims.insurer.example:443"),
        ("grpc", "127.0.0.1:50051"),
        ("grpc", "[::1]:8443"),
        ("grpc", "localhost:1"),
        ("webhook", "https://claims.insurer.example/iclaim/claims"),
        ("webhook", "https://127.0.0.1:8443/insurers/AIA/claims"),
        ("webhook", "https://[::1]:8443/x"),
        ("webhook", "https://insurer.example"),
        ("pull", ""),
    ],
)
def test_good_endpoints_are_accepted_unchanged(mode: str, endpoint: str) -> None:
    assert check_endpoint(mode, endpoint) == endpoint


@pytest.mark.parametrize(
    ("mode", "endpoint"),
    [
        # gRPC: HOST:PORT only.
        ("grpc", ""),
        ("grpc", "insurer.example"),
        ("grpc", "insurer.example:"),
        ("grpc", ":443"),
        ("grpc", "insurer.example:0"),
        ("grpc", "insurer.example:65536"),
        ("grpc", "insurer.example:44x"),
        ("grpc", "https://insurer.example:443"),
        ("grpc", "insurer.example:443/path"),
        ("grpc", "insurer example:443"),
        ("grpc", "-bad-.example:443"),
        ("grpc", "[not-v6]:443"),
        ("grpc", "insurer.example:443\n"),
        # Webhook: https:// with a host, no credentials, query or fragment.
        ("webhook", ""),
        ("webhook", "http://insurer.example/claims"),
        ("webhook", "HTTPS://insurer.example/claims"),
        ("webhook", "ftp://insurer.example/claims"),
        ("webhook", "insurer.example/claims"),
        ("webhook", "https://"),
        ("webhook", "https:///claims"),
        ("webhook", "https://user:pw@insurer.example/claims"),
        ("webhook", "https://insurer.example/claims?token=x"),
        ("webhook", "https://insurer.example/claims?"),
        ("webhook", "https://insurer.example/claims#frag"),
        ("webhook", "https://insurer.example:0/claims"),
        ("webhook", "https://insurer.example:99999/claims"),
        ("webhook", "https://insurer.example:/claims"),
        ("webhook", "https://insurer.example/cl aims"),
        ("webhook", "https://insurer.example/claims\u00e9"),
        # Pull: no endpoint.
        ("pull", "insurer.example:443"),
        ("pull", "https://insurer.example/claims"),
    ],
)
def test_bad_endpoints_are_refused(mode: str, endpoint: str) -> None:
    assert reason(check_endpoint, mode, endpoint) == "ENDPOINT_INVALID"


def test_endpoint_length_limit() -> None:
    host = "https://insurer.example/"
    at_limit = host + "a" * (MAX_ENDPOINT_CHARS - len(host))
    assert check_endpoint("webhook", at_limit) == at_limit
    assert reason(check_endpoint, "webhook", at_limit + "a") == "ENDPOINT_INVALID"


def test_refusals_do_not_quote_the_value() -> None:
    secret_looking = "https://user:SeCrEt@insurer.example/claims"
    with pytest.raises(InvalidArgument) as err:
        check_endpoint("webhook", secret_looking)
    assert "SeCrEt" not in err.value.message


@pytest.mark.parametrize("mode", ["simulated", "", "GRPC", "push", "http"])
def test_unknown_delivery_modes_are_refused(mode: str) -> None:
    assert reason(check_delivery_mode, mode) == "DELIVERY_MODE_INVALID"
    assert reason(check_endpoint, mode, "") == "DELIVERY_MODE_INVALID"


@pytest.mark.parametrize("mode", ["pull", "grpc", "webhook"])
def test_known_delivery_modes(mode: str) -> None:
    assert check_delivery_mode(mode) == mode


# --- public JWKs -----------------------------------------------------------------------


def _x25519() -> tuple[dict[str, Any], dict[str, Any]]:
    return generate_encryption_key("ins-k1")


def test_public_jwks_of_each_allowed_kind_are_accepted() -> None:
    _, x25519 = _x25519()
    assert check_public_jwk(x25519) == x25519
    assert check_public_jwk(json.dumps(x25519)) == x25519  # as the CLI reads it from a file
    p256 = dict(ECKey.generate_key("P-256", parameters={"kid": "p"}).as_dict(private=False))
    assert check_public_jwk(p256)["kid"] == "p"
    rsa = dict(RSAKey.generate_key(2048, parameters={"kid": "r"}).as_dict(private=False))
    assert check_public_jwk(rsa)["kid"] == "r"


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "k"])
def test_private_members_are_refused(member: str) -> None:
    _, public = _x25519()
    assert reason(check_public_jwk, {**public, member: "AAAA"}) == "JWK_PRIVATE"


def test_a_whole_private_jwk_is_refused_as_private() -> None:
    private, _ = _x25519()
    assert reason(check_public_jwk, private) == "JWK_PRIVATE"
    rsa_private = dict(RSAKey.generate_key(2048, parameters={"kid": "r"}).as_dict(private=True))
    assert reason(check_public_jwk, rsa_private) == "JWK_PRIVATE"


def _bad_jwks() -> list[Any]:
    _, public = _x25519()
    no_kid = {k: v for k, v in public.items() if k != "kid"}
    ed25519 = dict(OKPKey.generate_key("Ed25519", parameters={"kid": "e"}).as_dict(private=False))
    p384 = dict(ECKey.generate_key("P-384", parameters={"kid": "p"}).as_dict(private=False))
    with warnings.catch_warnings():  # too small on purpose
        warnings.simplefilter("ignore")
        small_rsa = dict(RSAKey.generate_key(1024, parameters={"kid": "r"}).as_dict(private=False))
    return [
        no_kid,
        {**public, "kid": ""},
        {**public, "kid": 7},
        {**public, "kid": "has space"},
        {**public, "kid": "k" * (MAX_KID_CHARS + 1)},
        ed25519,  # a signing curve: envelopes cannot seal to it
        p384,
        small_rsa,
        {**public, "kty": "oct"},
        {**public, "kty": "XYZ"},
        {**public, "x": "not base64url!"},
        {**public, "x": "AAAA"},  # wrong length for X25519
        {**public, "use": "sig"},
        [public],  # a JWK set, not one key
        "not json",
        "[]",
        json.dumps(public) + "x",
        "[" * 100_000,
    ]


@pytest.mark.filterwarnings("ignore:Key size should be")  # the 1024-bit RSA key, on purpose
@pytest.mark.parametrize("jwk", _bad_jwks())
def test_bad_jwks_are_refused(jwk: Any) -> None:
    assert reason(check_public_jwk, jwk) == "JWK_INVALID"


def test_jwk_size_limit() -> None:
    _, public = _x25519()
    padded = {**public, "x5u": "a" * MAX_JWK_BYTES}
    assert reason(check_public_jwk, padded) == "JWK_INVALID"
    assert reason(check_public_jwk, json.dumps(padded)) == "JWK_INVALID"


# --- endpoint CA -------------------------------------------------------------------------


def _ca() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Insurer Test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


def test_ca_pem_empty_or_certificates() -> None:
    cert, _ = _ca()
    other, _ = _ca()
    assert check_ca_pem("") == ""
    assert check_ca_pem(cert) == cert
    assert check_ca_pem(cert + other) == cert + other


def test_ca_pem_refusals() -> None:
    cert, key = _ca()
    assert reason(check_ca_pem, "not a pem") == "ENDPOINT_CA_INVALID"
    assert reason(check_ca_pem, cert.replace("MI", "XX", 1)) == "ENDPOINT_CA_INVALID"
    # The hub never takes a private key, even one pasted next to the certificate.
    assert reason(check_ca_pem, cert + key) == "ENDPOINT_CA_INVALID"
    assert reason(check_ca_pem, key) == "ENDPOINT_CA_INVALID"
    assert reason(check_ca_pem, cert + "\n" * MAX_CA_PEM_BYTES) == "ENDPOINT_CA_INVALID"
