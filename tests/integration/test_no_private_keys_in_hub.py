"""No private key of any insurer or hospital in any hub table, hub config or hub
process environment (issue 9; docs/protocol.md §1, §8): after claims went to a
gRPC, a webhook and a pull sandbox insurer, search the stack's database (every
table of every schema), the hub processes' environments (/proc/<pid>/environ,
Envoy under its runner included), and the files the hub writes (Envoy's config,
the services' logs). The sandbox process holds its own keys and none of the hub's
secrets; the admin token reaches insurer_adapter only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from iclaim.client.hospital import HospitalClient
from iclaim.fhir.claim import synthetic_claim
from iclaim.v1 import claim_service_pb2 as pb
from iclaim_ops.devstack.stack import SANDBOX
from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration

# A private JWK member with a key-sized value, in JSON as stored or as JSON
# text inside JSON (row_to_json escapes the inner quotes).
PRIVATE_JWK = re.compile(r'\\*"(d|p|q|dp|dq|qi)\\*"\s*:\s*\\*"[A-Za-z0-9_-]{16,}')
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# The hub's own private keys (not a participant's): the audit log's Ed25519
# checkpoint key, sealed under the master key.
HUB_OWN_KEY_COLUMNS = {("audit", "signing_keys", "private_sealed")}


def known_private_values(stack: RunningStack) -> dict[str, str]:
    """The private members of every participant key the dev stack made, by owner."""
    out: dict[str, str] = {}
    for path in (stack.credentials_path, stack.stack.sandbox_credentials):
        data = json.loads(path.read_text())
        for entry in [*data.get("hospitals", []), *data["insurers"]]:
            jwk = entry["encryption_private_jwk"]
            out[f"{entry['code']}:d"] = jwk["d"]
    return out


def problems_in(text: str, where: str, secrets: dict[str, str]) -> list[str]:
    found = [f"{where}: private key of {owner}" for owner, value in secrets.items() if value in text]
    if PRIVATE_JWK.search(text):
        found.append(f"{where}: a JWK with private members")
    if PEM_PRIVATE.search(text):
        found.append(f"{where}: a PEM private key")
    return found


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


async def decide_one_per_mode(stack: RunningStack) -> dict[str, pb.Claim]:
    creds = stack.creds()
    decided: dict[str, pb.Claim] = {}
    async with HospitalClient(creds) as client:
        insurers = await client.list_insurers()
        modes = {
            pb.DELIVERY_MODE_GRPC: "grpc",
            pb.DELIVERY_MODE_WEBHOOK: "webhook",
            pb.DELIVERY_MODE_PULL: "pull",
        }
        for mode, name in modes.items():
            insurer = next(i for i in insurers if i.delivery == mode and i.code != "TESTPULL")
            ref = f"NOPRIV-{name}-{creds.code}"
            claim = await client.submit_claim(
                synthetic_claim(creds.code, insurer.code, ref, "POL-1", 12_345),
                insurer_code=insurer.code,
                claim_ref=ref,
                amount_satang=12_345,
                decision_timeout_s=20,
            )
            decided[name] = claim
    return decided


async def test_no_private_key_in_any_hub_table_env_or_file(running_stack: RunningStack) -> None:
    decided = await decide_one_per_mode(running_stack)
    assert {name: c.state for name, c in decided.items()} == dict.fromkeys(
        ("grpc", "webhook", "pull"), pb.CLAIM_STATE_APPROVED
    )
    secrets = known_private_values(running_stack)
    assert len(secrets) == 3 + 61  # hospitals, the 60 sandbox insurers and TESTPULL
    problems: list[str] = []

    conn = await running_stack.db()
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        assert any(t["table_schema"] == "registry" for t in tables)
        for t in tables:
            name = f'"{t["table_schema"]}"."{t["table_name"]}"'
            rows = await conn.fetch(f"SELECT row_to_json(t)::text AS j FROM {name} t")  # noqa: S608
            problems += problems_in("\n".join(r["j"] for r in rows), name, secrets)
        # Sealed (bytea) columns cannot be searched; a place made for private
        # keys (the old adapter's insurer_keys.private_jwk_sealed) can be.
        private_columns = await conn.fetch(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND column_name ILIKE '%private%'"
        )
        problems += [
            f"column {tuple(c)} is made for private keys"
            for c in private_columns
            if tuple(c) not in HUB_OWN_KEY_COLUMNS
        ]
    finally:
        await conn.close()

    stack = running_stack.stack
    hub = {name: pid for name, pid in stack.pids().items() if name != SANDBOX.name}
    assert set(hub) == {"audit_log", "billing", "claim_router", "insurer_adapter", "authz", "envoy"}
    token_holders = set()
    for name, pid in hub.items():
        for p in descendants(pid):  # Envoy runs under its Python runner
            env = environ(p)
            problems += problems_in("\n".join(f"{k}={v}" for k, v in env.items()), f"env of {name}", secrets)
            if env.get("ICLAIM_ADMIN_TOKEN"):
                token_holders.add(name)
    assert token_holders == {"insurer_adapter"}

    hub_files = [stack.state_dir / "envoy.json", *(stack.logs_dir / f"{n}.log" for n in hub)]
    for path in hub_files:
        if path.exists():
            problems += problems_in(path.read_text(errors="replace"), str(path.name), secrets)
    assert problems == []


async def test_the_sandbox_holds_nothing_of_the_hub(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    env = environ(stack.pids()[SANDBOX.name])
    hub_secrets = {k for k in env if k in ("ICLAIM_MASTER_KEY", "ICLAIM_DATABASE_URL", "ICLAIM_REDIS_URL")}
    assert hub_secrets == set()
    assert "ICLAIM_ADMIN_TOKEN" not in env
    assert stack.master_key not in "\n".join(env.values())
    admin: dict[str, Any] = json.loads(stack.admin_config.read_text())
    assert admin == {"target": f"127.0.0.1:{stack.ports.adapter}", "token": stack.admin_token}
    assert oct(stack.admin_config.stat().st_mode & 0o777) == "0o600"
    assert oct(stack.sandbox_credentials.stat().st_mode & 0o777) == "0o600"


def test_the_search_finds_private_keys_as_stored() -> None:
    """The search above can fail: a private JWK as a jsonb value, as JSON text
    inside row_to_json, a PEM key, or a known private value anywhere."""
    from iclaim.crypto.envelope import generate_encryption_key

    private, public = generate_encryption_key("X-k1")
    as_jsonb = json.dumps({"public_jwk": private})
    as_text = json.dumps({"private_jwk": json.dumps(private)})
    assert problems_in(as_jsonb, "t", {})
    assert problems_in(as_text, "t", {})
    assert problems_in("-----BEGIN EC " + "PRIVATE KEY-----\n...", "t", {})
    assert problems_in(f"FOO=x{private['d']}y", "t", {"X:d": private["d"]}) == ["t: private key of X:d"]
    assert problems_in(json.dumps({"public_jwk": public}), "t", {"X:d": private["d"]}) == []
