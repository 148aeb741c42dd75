"""The dev stack's registration of the 60 sandbox insurers, on real PostgreSQL:
the registry gets only public parts (mode, endpoint, CA, public JWK, the
endpoint key it issued), sandbox.json gets the private parts, credentials stay
the same across runs while the registry still knows them, endpoints follow the
ports of each run."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.tls import ensure_dev_server_cert, ensure_dev_tls
from iclaim.crypto.signing import b64url_decode
from iclaim.insurer.credentials import load_all_insurer_credentials
from iclaim_hub.common.db import create_pool
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.store import RegistryStore
from iclaim_ops.devstack.sandbox_seed import SandboxListen, seed_sandbox
from tests.support.databases import create_db, drop_db


@pytest.fixture
async def registry() -> AsyncIterator[RegistryStore]:
    name, url = await create_db()
    pool = await create_pool(url, max_size=4)
    try:
        store = RegistryStore(pool, SecretBox(b64url_decode(SecretBox.new_master_key())))
        await store.migrate()
        yield store
    finally:
        await pool.close()
        await drop_db(name)


async def seed(store: RegistryStore, folder: Path, grpc_port: int, webhook_port: int) -> dict[str, Any]:
    tls = ensure_dev_tls(folder)
    sandbox_tls = ensure_dev_server_cert(folder, "sandbox", "iClaim dev sandbox insurers")
    return await seed_sandbox(
        store,
        folder / "sandbox.json",
        gateway="127.0.0.1:8443",
        ca_cert=tls.ca_cert,
        tls_cert=sandbox_tls.server_cert,
        tls_key=sandbox_tls.server_key,
        listen=SandboxListen("127.0.0.1", grpc_port, webhook_port),
    )


def _has_private_material(value: Any) -> bool:
    text = json.dumps(value) if not isinstance(value, str) else value
    return '"d":' in text.replace(" ", "") or "PRIVATE KEY" in text


async def test_registry_holds_public_parts_and_the_file_the_private_ones(
    registry: RegistryStore, tmp_path: Path
) -> None:
    written = await seed(registry, tmp_path, 50101, 50102)
    path = tmp_path / "sandbox.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = {e["code"]: e for e in written["insurers"]}
    assert len(entries) == 60
    insurers = {p.code: p for p in await registry.principals("insurer")}
    modes = {code: insurers[code].delivery_mode for code in entries}
    assert sorted(modes.values()).count("grpc") == 20
    assert sorted(modes.values()).count("webhook") == 20
    assert sorted(modes.values()).count("pull") == 20
    for line in (1, 2):  # life, non-life: each spread over the three modes
        assert {modes[c] for c in entries if insurers[c].line == line} == {"grpc", "webhook", "pull"}
    ca_pem = (tmp_path / "tls" / "ca.pem").read_text()
    for code, entry in entries.items():
        p = insurers[code]
        assert entry["delivery"] == p.delivery_mode
        if p.delivery_mode == "grpc":
            assert (p.endpoint, p.endpoint_ca_pem) == ("127.0.0.1:50101", ca_pem)
        elif p.delivery_mode == "webhook":
            assert p.endpoint == f"https://127.0.0.1:50102/insurers/{code}/claims"
            assert p.endpoint_ca_pem == ca_pem
        else:
            assert (p.endpoint, p.endpoint_ca_pem) == ("", "")
        # The registry: the public key only, the one the file's private key opens.
        current = p.current_key()
        assert current is not None and current.kid == entry["encryption_private_jwk"]["kid"]
        assert not _has_private_material(current.public_jwk)
        assert entry["encryption_private_jwk"]["d"]
        signing = await registry.signing_key(code, entry["key_id"])
        assert signing is not None and signing.secret == b64url_decode(entry["secret"])
        endpoint_key = await registry.endpoint_key(code)
        if p.delivery_mode == "pull":
            assert endpoint_key is None and entry["endpoint_key_id"] == ""
        else:
            assert endpoint_key is not None and endpoint_key.key_id == entry["endpoint_key_id"]
            assert endpoint_key.secret == b64url_decode(entry["endpoint_secret"])
    # The kit reads the file as it is.
    loaded = load_all_insurer_credentials(path)
    assert [c.code for c in loaded] == list(entries)
    assert all(c.tls_cert is not None and c.tls_cert.exists() for c in loaded)


async def test_credentials_are_stable_across_runs_and_endpoints_follow_the_ports(
    registry: RegistryStore, tmp_path: Path
) -> None:
    first = await seed(registry, tmp_path, 50101, 50102)
    second = await seed(registry, tmp_path, 41001, 41002)
    assert first["insurers"] == second["insurers"]
    aia = await registry.principal("AIA")  # grpc
    mtl = await registry.principal("MTL")  # webhook
    assert aia is not None and aia.endpoint == "127.0.0.1:41001"
    assert mtl is not None and mtl.endpoint == "https://127.0.0.1:41002/insurers/MTL/claims"


async def test_what_the_registry_no_longer_knows_is_enrolled_again(
    registry: RegistryStore, tmp_path: Path
) -> None:
    first = {e["code"]: e for e in (await seed(registry, tmp_path, 50101, 50102))["insurers"]}
    # An operator rotated AIA's endpoint key; TLI (pull) got a new encryption key.
    await registry.issue_endpoint_key("AIA")
    await registry.add_encryption_key("TLI", "TLI-other", {**_public(first["TLI"]), "kid": "TLI-other"})
    second = {e["code"]: e for e in (await seed(registry, tmp_path, 50101, 50102))["insurers"]}
    changed = {code for code in first if first[code] != second[code]}
    assert changed == {"AIA", "TLI"}
    endpoint_key = await registry.endpoint_key("AIA")
    assert endpoint_key is not None and endpoint_key.key_id == second["AIA"]["endpoint_key_id"]


async def test_a_file_from_another_registry_or_damaged_is_not_trusted(
    registry: RegistryStore, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    damaged = [
        {"code": "AIA", "delivery": "grpc", "key_id": "x", "secret": "AAAA"},
        {"code": "MTL", "delivery": "webhook", "key_id": "y", "secret": "!!not base64!!"},
        {"code": "TLI", "delivery": "pull", "key_id": "z", "secret": "AAAA", "encryption_private_jwk": "no"},
        "not an object",
    ]
    (other / "sandbox.json").write_text(json.dumps({"insurers": damaged}))
    written = {e["code"]: e for e in (await seed(registry, other, 50101, 50102))["insurers"]}
    assert all(written[c]["key_id"].startswith("sbx-") for c in ("AIA", "MTL", "TLI"))


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry["encryption_private_jwk"].items() if k != "d"}
