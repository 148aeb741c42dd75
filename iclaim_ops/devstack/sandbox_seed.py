"""The 60 sandbox insurers (§8) as the registry and their own process see them.

The dev stack plays the insurers' operators: for each sandbox insurer it makes
a signing key, an encryption key pair and (push modes) has the registry issue an
endpoint key, then registers only the public parts, the delivery mode, the
endpoint and the dev CA. The private parts go to `.iclaim/dev/sandbox.json`
(owner-only), read by `python -m sandbox` and by nothing of the hub.

Credentials are kept across runs while the registry still knows them (as for
the hospitals in seed.py); endpoints follow the ports of this run."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.crypto.signing import b64url, b64url_decode
from iclaim_hub.registry.directory import SANDBOX_MODES, sample_insurers
from iclaim_hub.registry.model import DELIVERY_GRPC, DELIVERY_PULL, DELIVERY_WEBHOOK
from iclaim_hub.registry.store import RegistryStore


@dataclass(frozen=True)
class SandboxListen:
    """Where the sandbox process serves (and so what the registry points at)."""

    host: str
    grpc_port: int
    webhook_port: int

    def endpoint(self, code: str, mode: str) -> str:
        if mode == DELIVERY_GRPC:
            return f"{self.host}:{self.grpc_port}"
        if mode == DELIVERY_WEBHOOK:
            return f"https://{self.host}:{self.webhook_port}/insurers/{code}/claims"
        return ""


def mode_counts(modes: Mapping[str, str]) -> dict[str, int]:
    return {m: sum(1 for v in modes.values() if v == m) for m in SANDBOX_MODES}


async def _still_valid(store: RegistryStore, entry: dict[str, Any], mode: str) -> bool:
    """The entry's keys are the ones the registry holds for its insurer now
    (a damaged entry is not: the insurer is enrolled afresh)."""
    try:
        return await _matches_registry(store, entry, mode)
    except (ValueError, TypeError, AttributeError):
        return False


async def _matches_registry(store: RegistryStore, entry: dict[str, Any], mode: str) -> bool:
    code = entry.get("code", "")
    key = await store.signing_key(code, entry.get("key_id", ""))
    if key is None or key.secret != b64url_decode(entry.get("secret", "")):
        return False
    principal = await store.principal(code)
    current = principal.current_key() if principal is not None else None
    if current is None or current.kid != entry.get("encryption_private_jwk", {}).get("kid"):
        return False
    if mode == DELIVERY_PULL:
        return True
    endpoint_key = await store.endpoint_key(code)
    return (
        endpoint_key is not None
        and endpoint_key.key_id == entry.get("endpoint_key_id")
        and endpoint_key.secret == b64url_decode(entry.get("endpoint_secret", ""))
    )


async def _enrol(store: RegistryStore, code: str, mode: str) -> dict[str, Any]:
    key_id = f"sbx-{secrets.token_hex(3)}"
    secret = os.urandom(32)
    await store.rotate_signing_key(code, key_id, secret)
    private_jwk, public_jwk = generate_encryption_key(f"{code}-enc-{secrets.token_hex(3)}")
    # Only the public half reaches the registry.
    await store.add_encryption_key(code, public_jwk["kid"], public_jwk)
    entry: dict[str, Any] = {
        "code": code,
        "key_id": key_id,
        "secret": b64url(secret),
        "encryption_private_jwk": private_jwk,
        "endpoint_key_id": "",
        "endpoint_secret": "",
    }
    if mode != DELIVERY_PULL:
        endpoint_key = await store.issue_endpoint_key(code)
        entry["endpoint_key_id"] = endpoint_key.key_id
        entry["endpoint_secret"] = b64url(endpoint_key.secret)
    return entry


def _previous_entries(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("insurers", []) if isinstance(data, dict) else []
    return {e["code"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("code"), str)}


async def seed_sandbox(
    store: RegistryStore,
    path: Path,
    *,
    gateway: str,
    ca_cert: Path,
    tls_cert: Path,
    tls_key: Path,
    listen: SandboxListen,
) -> dict[str, Any]:
    """Registers the sandbox insurers (public parts, mode, endpoint, CA) and
    writes their credentials file; returns what it wrote."""
    ca_pem = ca_cert.read_text()
    previous = _previous_entries(path)
    entries: list[dict[str, Any]] = []
    # The directory gives each sample insurer its mode (grpc, webhook, pull in turn).
    for principal in sample_insurers():
        code, mode = principal.code, principal.delivery_mode or DELIVERY_PULL
        push = mode != DELIVERY_PULL
        endpoint, ca = listen.endpoint(code, mode), ca_pem if push else ""
        await store.upsert_principal(
            dataclasses.replace(principal, endpoint=endpoint, endpoint_ca_pem=ca, endpoint_mtls=False)
        )
        # Through the registry's checks, as an operator's change would be.
        await store.set_endpoint(code, delivery_mode=mode, endpoint=endpoint, endpoint_ca_pem=ca)
        old = previous.get(code)
        if old is not None and old.get("delivery") == mode and await _still_valid(store, old, mode):
            entry = {k: v for k, v in old.items() if k != "delivery"}
        else:
            entry = await _enrol(store, code, mode)
        entries.append({**entry, "delivery": mode})
    data = {
        "gateway": gateway,
        "ca_cert": str(ca_cert.resolve()),
        "tls_cert": str(tls_cert.resolve()),
        "tls_key": str(tls_key.resolve()),
        "insurers": entries,
    }
    write_private_json(path, data)
    return data


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Owner-only (it holds secrets), replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
