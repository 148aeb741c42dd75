"""Helpers for the insurer kit's tests: a throwaway CA and certificates, insurer
credentials files, sealed deliveries, pushes signed the way the hub signs
them (§10.1), and a stand-in for the gateway (the kit's only outside party)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import json_format
from google.rpc import error_details_pb2

from iclaim.crypto import signing
from iclaim.crypto.envelope import generate_encryption_key, open_envelope, seal
from iclaim.errors import build_status, Code
from iclaim.fhir import parse_claim_response
from iclaim.fhir.claim import synthetic_claim
from iclaim.insurer.credentials import InsurerCredentials, load_all_insurer_credentials
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb

HOSPITAL = "10670"
HOSPITAL_PRIV, HOSPITAL_PUB = generate_encryption_key("10670-k1")


# --- TLS ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: Path  # trust anchor for the server certificate
    cert: Path
    key: Path
    client_ca: Path  # a separate CA for client certificates (mTLS)
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here (a client trusting it must fail)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca[1], hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def make_tls(folder: Path) -> Tls:
    folder.mkdir(parents=True, exist_ok=True)
    server_ca, client_ca, other = _ca("kit test CA"), _ca("kit test client CA"), _ca("unrelated CA")
    server = _leaf(server_ca, "localhost", server=True)
    client = _leaf(client_ca, "ICLAIM", server=False)
    return Tls(
        ca=_write(folder / "ca.pem", server_ca[0]),
        cert=_write(folder / "server.pem", *server),
        key=folder / "server.key",
        client_ca=_write(folder / "client-ca.pem", client_ca[0]),
        client_cert=_write(folder / "client.pem", *client),
        client_key=folder / "client.key",
        other_ca=_write(folder / "other-ca.pem", other[0]),
    )


# --- credentials ----------------------------------------------------------------


@dataclass
class Party:
    """One insurer as the test knows it (its public key, to seal claims to it)."""

    creds: InsurerCredentials
    public_jwk: dict[str, Any]


def write_credentials(
    folder: Path, codes: list[str], tls: Tls | None, *, mtls: bool = False, pull: tuple[str, ...] = ()
) -> tuple[Path, dict[str, Party]]:
    """A credentials file in the kit's format; insurers in `pull` get no endpoint key."""
    entries, publics = [], {}
    for code in codes:
        priv, pub = generate_encryption_key(f"{code}-k1")
        publics[code] = pub
        entry: dict[str, Any] = {
            "code": code,
            "key_id": f"{code.lower()}-k1",
            "secret": signing.b64url(secrets.token_bytes(32)),
            "encryption_private_jwk": priv,
        }
        if code not in pull:
            entry["endpoint_key_id"] = f"ep-{secrets.token_hex(6)}"
            entry["endpoint_secret"] = signing.b64url(secrets.token_bytes(32))
        entries.append(entry)
    data: dict[str, Any] = {"gateway": "127.0.0.1:1", "insurers": entries}
    if tls is not None:
        data.update(tls_cert=str(tls.cert), tls_key=str(tls.key))
        if mtls:
            data["tls_client_ca"] = str(tls.client_ca)
    path = folder / "insurers.json"
    path.write_text(json.dumps(data))
    loaded = {c.code: c for c in load_all_insurer_credentials(path)}
    return path, {code: Party(loaded[code], publics[code]) for code in codes}


# --- deliveries -------------------------------------------------------------------


def delivery(
    party: Party,
    *,
    policy: str = "POL-1",
    amount: int = 125_000,
    transaction_id: str | None = None,
    claim_ref: str | None = None,
    envelope: str | None = None,
    total_literal: bytes | None = None,
) -> ipb.ClaimDelivery:
    """A sealed claim as the hub delivers it; `total_literal` replaces the JSON
    number in the sealed Claim.total (the header and the delivery keep `amount`)."""
    code = party.creds.code
    ref = claim_ref or f"C-{secrets.token_hex(4)}"
    doc = synthetic_claim(HOSPITAL, code, ref, policy, amount)
    if total_literal is not None:
        total = b'"total":{"value":'
        start = doc.index(total) + len(total)
        doc = doc[:start] + total_literal + doc[doc.index(b",", start) :]
    sealed = envelope or seal(
        doc, party.public_jwk, sender=HOSPITAL, recipient=code, claim_ref=ref, amount_satang=amount
    )
    return ipb.ClaimDelivery(
        transaction_id=transaction_id or f"txn_{secrets.token_hex(14)}",
        hospital_code=HOSPITAL,
        claim_ref=ref,
        billed_amount_satang=amount,
        envelope=sealed,
    )


def delivery_json(d: ipb.ClaimDelivery) -> bytes:
    return json_format.MessageToJson(d).encode()


def push_headers(
    creds: InsurerCredentials,
    method_line: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    secret: bytes | None = None,
    client: str = "ICLAIM",
) -> dict[str, str]:
    """The five §10.1 headers, signed as the hub signs a push."""
    ts = int(time.time()) if timestamp is None else timestamp
    n = nonce or secrets.token_urlsafe(24)
    sig = signing.sign(
        secret or creds.endpoint_secret, client, creds.endpoint_key_id, method_line, ts, n, body
    )
    return {
        signing.H_CLIENT: client,
        signing.H_KEY_ID: creds.endpoint_key_id,
        signing.H_TIMESTAMP: str(ts),
        signing.H_NONCE: n,
        signing.H_SIGNATURE: sig,
    }


# --- the gateway, as the kit sees it -------------------------------------------------


def rpc_error(code: grpc.StatusCode, reason: str, **metadata: str) -> grpc.aio.AioRpcError:
    status = build_status(Code[code.name], "refused", reason, metadata)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="refused")


@dataclass
class Posted:
    transaction_id: str
    state: int
    approved: int
    reason_code: str
    envelope: str
    at: float

    def opened(self) -> Any:
        """The ClaimResponse as the hospital reads it."""
        header, body = open_envelope(self.envelope, HOSPITAL_PRIV)
        return header, parse_claim_response(body)


@dataclass
class FakeGateway:
    """Answers hospital_key / post_decision / pull like the gateway would.
    `errors`: what each post_decision call raises, in order (None: succeed)."""

    posted: list[Posted] = field(default_factory=list)
    errors: list[BaseException | None] = field(default_factory=list)
    key_lookups: int = 0
    calls: list[str] = field(default_factory=list)
    to_pull: list[ipb.ClaimDelivery] = field(default_factory=list)
    pulls: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]:
        self.key_lookups += 1
        self.calls.append("hospital_key")
        assert hospital_code == HOSPITAL
        return dict(HOSPITAL_PUB)

    async def post_decision(
        self,
        transaction_id: str,
        *,
        state: int,
        approved_amount_satang: int,
        decision_envelope: str,
        reason_code: str = "",
    ) -> pb.Claim:
        self.calls.append("post_decision")
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        self.posted.append(
            Posted(
                transaction_id,
                state,
                approved_amount_satang,
                reason_code,
                decision_envelope,
                time.monotonic(),
            )
        )
        self.changed.set()
        return pb.Claim(transaction_id=transaction_id, state=state)  # type: ignore[arg-type]

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        self.pulls += 1
        if self.to_pull:
            out, self.to_pull = self.to_pull[:max_claims], self.to_pull[max_claims:]
            return out
        await asyncio.sleep(min(wait_s, 0.05))
        return []

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Posted]:
        async def enough() -> None:
            while len(self.posted) < n:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.posted


def error_reason(trailing: Any) -> str:
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            from google.rpc import status_pb2

            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


def client_ssl(tls: Tls, *, trust: Path | None = None, with_cert: bool = False) -> Any:
    """An ssl.SSLContext for an HTTPS client of the kit."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(trust or tls.ca))
    if with_cert:
        ctx.load_cert_chain(tls.client_cert, tls.client_key)
    return ctx


def grpc_channel(
    tls: Tls, port: int, *, trust: Path | None = None, with_cert: bool = False
) -> grpc.aio.Channel:
    root = (trust or tls.ca).read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=tls.client_key.read_bytes() if with_cert else None,
        certificate_chain=tls.client_cert.read_bytes() if with_cert else None,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", creds)
