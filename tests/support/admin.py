"""AdminService on port 0 over a real RegistryStore (scratch PostgreSQL), with a
recording fake of the delivery layer; shared by the admin service and CLI tests."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.crypto.signing import b64url_decode
from iclaim.limits import CLIENT_OPTIONS
from iclaim_hub.common.server import bind_server
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.internal.v1 import admin_pb2_grpc
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import RegistryStore
from services.insurer_adapter.admin import SERVICE_NAME, AdminServicer, admin_token_digest

TOKEN = "adm-" + secrets.token_urlsafe(32)
HOSPITAL = "10670"
PULL = "PULLCO"
PUSH = "PUSHCO"
REGISTRY_TABLES = ("principals", "signing_keys", "encryption_keys", "endpoint_keys", "insurer_health")


@dataclass(frozen=True)
class Row:
    transaction_id: str
    insurer_code: str
    attempts: int
    last_error: str
    next_attempt_at: dt.datetime | None
    state: str


@dataclass
class FakeDeliveries:
    """The delivery layer's operator seam: records each call."""

    rows: list[Row] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    list_calls: list[tuple[str, str, int]] = field(default_factory=list)
    redrive_calls: list[list[str]] = field(default_factory=list)

    async def list_deliveries(self, insurer_code: str, state: str, limit: int) -> list[Row]:
        self.list_calls.append((insurer_code, state, limit))
        rows = [r for r in self.rows if insurer_code in ("", r.insurer_code) and state in ("", r.state)]
        return rows[:limit]

    async def redrive(self, transaction_ids: Sequence[str]) -> list[str]:
        self.redrive_calls.append(list(transaction_ids))
        done = [t for t in transaction_ids if t in self.failed]
        self.failed -= set(done)
        return done


def public_jwk(kid: str) -> dict[str, Any]:
    return generate_encryption_key(kid)[1]


def private_jwk(kid: str) -> dict[str, Any]:
    return generate_encryption_key(kid)[0]


def ca_pem(name: str = "Insurer Test CA") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class AdminEnv:
    pool: asyncpg.Pool
    registry: RegistryStore
    deliveries: FakeDeliveries
    port: int
    channel: grpc.aio.Channel

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stub(self) -> admin_pb2_grpc.AdminServiceAsyncStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    async def call(self, method: str, request: Any, token: str | None = TOKEN) -> Any:
        md = (("authorization", f"Bearer {token}"),) if token is not None else ()
        return await getattr(self.stub, method)(request, metadata=md, timeout=10)

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every registry row, to show that a refused request changed nothing."""
        out = {}
        for table in REGISTRY_TABLES:
            rows = await self.pool.fetch(f"SELECT * FROM registry.{table} ORDER BY 1, 2")
            out[table] = [dict(r) for r in rows]
        return out

    def admin_config(self, directory: Path, token: str = TOKEN) -> Path:
        path = directory / "admin.json"
        path.write_text(json.dumps({"target": self.target, "token": token}))
        return path


async def _seed(registry: RegistryStore) -> None:
    """A hospital, a pull insurer and a gRPC push insurer, each with keys."""
    await registry.upsert_principal(Principal(HOSPITAL, "hospital", "Seed Hospital"))
    await registry.upsert_principal(Principal(PULL, "insurer", "Pull Co", line=2, delivery_mode="pull"))
    await registry.upsert_principal(
        Principal(PUSH, "insurer", "Push Co", line=1, delivery_mode="grpc", endpoint="push.example:443")
    )
    for code in (HOSPITAL, PULL, PUSH):
        await registry.rotate_signing_key(code, f"k-seed-{code.lower()}", secrets.token_bytes(32))
        jwk = public_jwk(f"{code}-seed")
        await registry.add_encryption_key(code, jwk["kid"], jwk)
    await registry.issue_endpoint_key(PUSH)


@asynccontextmanager
async def running_admin(database_url: str) -> AsyncIterator[AdminEnv]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    registry = RegistryStore(pool, SecretBox(b64url_decode(SecretBox.new_master_key())))
    await registry.migrate()
    await _seed(registry)
    deliveries = FakeDeliveries()
    servicer = AdminServicer(registry, deliveries, admin_token_digest(TOKEN))
    server, port, _health = await bind_server(
        "127.0.0.1:0", [partial(admin_pb2_grpc.add_AdminServiceServicer_to_server, servicer)], [SERVICE_NAME]
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS)
    try:
        yield AdminEnv(pool, registry, deliveries, port, channel)
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()
