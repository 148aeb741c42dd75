"""Seeds the dev registry (§8) with the hospitals and TESTPULL and writes
`.iclaim/dev/credentials.json`. (The 60 sandbox insurers are registered with
their endpoints when the stack starts: sandbox_seed.py.)

Credentials are generated at run time and kept across runs while the registry
still knows them; a new database gets fresh ones."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.crypto.signing import b64url, b64url_decode
from iclaim_hub.registry.directory import dev_hospitals, pull_insurer
from iclaim_hub.registry.store import RegistryStore
from iclaim_ops.devstack.sandbox_seed import write_private_json


async def _still_valid(store: RegistryStore, entry: dict[str, Any]) -> bool:
    key = await store.signing_key(entry["code"], entry["key_id"])
    if key is None or key.secret != b64url_decode(entry["secret"]):
        return False
    principal = await store.principal(entry["code"])
    kid = entry["encryption_private_jwk"].get("kid")
    return principal is not None and kid in principal.accepted_kids()


async def _enrol(store: RegistryStore, code: str) -> dict[str, Any]:
    key_id = f"dev-{secrets.token_hex(3)}"
    secret = os.urandom(32)
    # Rotation keeps at most two active keys: the newest two enrolments.
    await store.rotate_signing_key(code, key_id, secret)
    private_jwk, public_jwk = generate_encryption_key(f"{code}-enc-{secrets.token_hex(3)}")
    await store.add_encryption_key(code, public_jwk["kid"], public_jwk)
    return {
        "code": code,
        "key_id": key_id,
        "secret": b64url(secret),
        "encryption_private_jwk": private_jwk,
    }


async def seed_dev_registry(
    store: RegistryStore, credentials_path: Path, *, gateway: str, ca_cert: Path
) -> dict[str, Any]:
    for principal in [*dev_hospitals(), pull_insurer()]:
        await store.upsert_principal(principal)

    previous: dict[str, dict[str, Any]] = {}
    if credentials_path.exists():
        old = json.loads(credentials_path.read_text())
        for entry in [*old.get("hospitals", []), *old.get("insurers", [])]:
            previous[entry["code"]] = entry

    async def entry_for(code: str) -> dict[str, Any]:
        old_entry = previous.get(code)
        if old_entry is not None and await _still_valid(store, old_entry):
            return old_entry
        return await _enrol(store, code)

    creds = {
        "gateway": gateway,
        "ca_cert": str(ca_cert.resolve()),
        "hospitals": [await entry_for(h.code) for h in dev_hospitals()],
        "insurers": [await entry_for(pull_insurer().code)],
    }
    write_private_json(credentials_path, creds)  # it holds secrets and private keys
    return creds


def load_or_create_master_key(state_dir: Path) -> str:
    """The dev master key (production: a k8s Secret in ICLAIM_MASTER_KEY)."""
    path = state_dir / "master.key"
    if path.exists():
        return path.read_text().strip()
    from iclaim_hub.crypto.secretbox import SecretBox

    key = SecretBox.new_master_key()
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key
