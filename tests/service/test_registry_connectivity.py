"""The registry's insurer-connectivity records (issue 9; docs/protocol.md §10,
§11) on real PostgreSQL: delivery modes and endpoints, endpoint keys sealed at
rest and rotated, health, and the directory cache that carries them."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.errors import InvalidArgument, NotFound
from iclaim_hub.common.db import apply_migrations
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim_hub.registry.cache import MAX_TTL_S, DirectoryCache
from iclaim_hub.registry.directory import dev_hospitals, pull_insurer, sample_insurers, sandbox_modes
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import MIGRATIONS, SCHEMA, RegistryStore

GRPC, WEBHOOK, PULL = "AIA", "MTL", "TLI"  # sandbox modes of the first three sample insurers
HOSPITAL = "10670"


@dataclass
class Reg:
    pool: asyncpg.Pool
    store: RegistryStore
    box: SecretBox


@pytest.fixture
async def reg(database_url: str) -> AsyncIterator[Reg]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    box = SecretBox(os.urandom(32))
    store = RegistryStore(pool, box)
    await store.migrate()
    for p in [*dev_hospitals(), *sample_insurers()[:5], pull_insurer()]:
        await store.upsert_principal(p)
    yield Reg(pool, store, box)
    await pool.close()


async def _row(reg: Reg, code: str) -> dict[str, object]:
    row = await reg.pool.fetchrow("SELECT * FROM registry.principals WHERE code = $1", code)
    assert row is not None
    return dict(row)


def test_sample_insurers_split_evenly_over_the_three_modes() -> None:
    modes = sandbox_modes()
    insurers = sample_insurers()
    assert len(insurers) == 60 and [p.code for p in insurers] == list(modes)
    assert {m: list(modes.values()).count(m) for m in ("grpc", "webhook", "pull")} == {
        "grpc": 20,
        "webhook": 20,
        "pull": 20,
    }
    assert all(p.delivery_mode == modes[p.code] and p.endpoint == "" for p in insurers)
    for line in (1, 2):  # both lines have every mode
        assert {p.delivery_mode for p in insurers if p.line == line} == {"grpc", "webhook", "pull"}
    assert (modes[GRPC], modes[WEBHOOK], modes[PULL]) == ("grpc", "webhook", "pull")


async def test_migration_turns_simulated_insurers_into_grpc(database_url: str, tmp_path: Path) -> None:
    """A registry from before issue 9 (principals with delivery_mode 'simulated')
    migrates: they become grpc, with empty endpoints; 'simulated' is refused after."""
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0005":
            shutil.copy(path, before / path.name)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await apply_migrations(pool, SCHEMA, before)
        await pool.execute(
            "INSERT INTO registry.principals (code, role, display_name, line, delivery_mode)"
            " VALUES ('OLD', 'insurer', 'Old Sim', 1, 'simulated'),"
            " ('OLDP', 'insurer', 'Old Pull', 2, 'pull')"
        )
        store = RegistryStore(pool, SecretBox(os.urandom(32)))
        await store.migrate()
        old, oldp = await store.principal("OLD"), await store.principal("OLDP")
        assert old is not None and oldp is not None
        assert (old.delivery_mode, old.endpoint, old.endpoint_ca_pem, old.endpoint_mtls) == (
            "grpc",
            "",
            "",
            False,
        )
        assert oldp.delivery_mode == "pull"
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(
                "UPDATE registry.principals SET delivery_mode = 'simulated' WHERE code = 'OLD'"
            )
    finally:
        await pool.close()


async def test_upsert_round_trips_the_endpoint_fields(reg: Reg) -> None:
    aia = await reg.store.principal(GRPC)
    assert aia is not None
    await reg.store.upsert_principal(
        replace(aia, endpoint="sandbox.example:7443", endpoint_ca_pem="", endpoint_mtls=True)
    )
    again = await reg.store.principal(GRPC)
    assert again is not None
    assert (again.endpoint, again.endpoint_mtls) == ("sandbox.example:7443", True)
    listed = {p.code: p for p in await reg.store.principals("insurer")}
    assert listed[GRPC].endpoint == "sandbox.example:7443" and listed[GRPC].endpoint_mtls


async def test_set_endpoint_changes_what_it_names(reg: Reg) -> None:
    p = await reg.store.set_endpoint(GRPC, endpoint="claims.aia.example:443", endpoint_mtls=True)
    assert (p.delivery_mode, p.endpoint, p.endpoint_mtls, p.available) == (
        "grpc",
        "claims.aia.example:443",
        True,
        True,
    )
    p = await reg.store.set_endpoint(
        GRPC, delivery_mode="webhook", endpoint="https://claims.aia.example/iclaim/claims"
    )
    assert (p.delivery_mode, p.endpoint, p.endpoint_mtls) == (
        "webhook",
        "https://claims.aia.example/iclaim/claims",
        True,
    )
    p = await reg.store.set_endpoint(GRPC, available=False)
    assert not p.available and p.endpoint == "https://claims.aia.example/iclaim/claims"
    # Switching to pull without naming an endpoint clears it (a pull insurer has none).
    p = await reg.store.set_endpoint(GRPC, delivery_mode="pull")
    assert (p.delivery_mode, p.endpoint) == ("pull", "")
    assert await reg.store.principal(GRPC) == p


@pytest.mark.parametrize(
    ("code", "changes", "error", "reason"),
    [
        (GRPC, {"endpoint": "https://x.example/claims"}, InvalidArgument, "ENDPOINT_INVALID"),
        (GRPC, {"delivery_mode": "webhook"}, InvalidArgument, "ENDPOINT_INVALID"),  # needs an https URL
        (
            GRPC,
            {"delivery_mode": "webhook", "endpoint": "http://x.example/c"},
            InvalidArgument,
            "ENDPOINT_INVALID",
        ),
        (GRPC, {"delivery_mode": "pull", "endpoint": "x.example:443"}, InvalidArgument, "ENDPOINT_INVALID"),
        (GRPC, {"delivery_mode": "simulated"}, InvalidArgument, "DELIVERY_MODE_INVALID"),
        (
            GRPC,
            {"endpoint_ca_pem": "not a certificate", "available": False},
            InvalidArgument,
            "ENDPOINT_CA_INVALID",
        ),
        (PULL, {"delivery_mode": "grpc"}, InvalidArgument, "ENDPOINT_INVALID"),  # no endpoint given
        ("NOPE", {"available": False}, NotFound, "UNKNOWN_PRINCIPAL"),
        (HOSPITAL, {"available": False}, NotFound, "UNKNOWN_PRINCIPAL"),
    ],
)
async def test_refused_changes_change_nothing(
    reg: Reg, code: str, changes: dict[str, object], error: type[Exception], reason: str
) -> None:
    await reg.store.set_endpoint(GRPC, endpoint="claims.aia.example:443")
    before = {c: await _row(reg, c) for c in (GRPC, PULL, HOSPITAL)}
    with pytest.raises(error) as err:
        await reg.store.set_endpoint(code, **changes)  # type: ignore[arg-type]
    assert getattr(err.value, "reason", None) == reason
    assert {c: await _row(reg, c) for c in (GRPC, PULL, HOSPITAL)} == before


async def test_endpoint_keys_are_issued_sealed_and_rotated(reg: Reg) -> None:
    assert await reg.store.endpoint_key(GRPC) is None
    first = await reg.store.issue_endpoint_key(GRPC)
    assert first.insurer_code == GRPC and first.key_id.startswith("ep-") and len(first.secret) == 32
    assert first.secret.hex() not in repr(first)  # never printed by accident
    assert await reg.store.endpoint_key(GRPC) == first

    sealed = await reg.pool.fetchval(
        "SELECT secret_sealed FROM registry.endpoint_keys WHERE key_id = $1", first.key_id
    )
    assert first.secret not in bytes(sealed)  # sealed at rest

    # Rotation revokes the old key at once: only the new one is current.
    second = await reg.store.issue_endpoint_key(GRPC)
    assert second.key_id != first.key_id and second.secret != first.secret
    assert await reg.store.endpoint_key(GRPC) == second
    rows = await reg.pool.fetch(
        "SELECT key_id, revoked_at FROM registry.endpoint_keys WHERE insurer_code = $1", GRPC
    )
    assert {r["key_id"]: r["revoked_at"] is not None for r in rows} == {
        first.key_id: True,
        second.key_id: False,
    }
    # The database itself holds at most one un-revoked key per insurer.
    with pytest.raises(asyncpg.UniqueViolationError):
        await reg.pool.execute(
            "INSERT INTO registry.endpoint_keys (key_id, insurer_code, secret_sealed)"
            " VALUES ('ep-x', $1, $2)",
            GRPC,
            bytes(sealed),
        )
    # Key ids are unique across insurers (one receiver may serve several).
    other = await reg.store.issue_endpoint_key(WEBHOOK)
    assert other.key_id not in (first.key_id, second.key_id)


async def _copy_sealed_secret(reg: Reg, from_key_id: str, to_key_id: str) -> None:
    """Another row's sealed endpoint secret, copied onto `to_key_id` (it must not open)."""
    await reg.pool.execute(
        "UPDATE registry.endpoint_keys SET secret_sealed ="
        " (SELECT secret_sealed FROM registry.endpoint_keys WHERE key_id = $1) WHERE key_id = $2",
        from_key_id,
        to_key_id,
    )


async def test_an_endpoint_secret_is_bound_to_its_row(reg: Reg) -> None:
    """Copied onto another insurer (or read under another master key), a sealed
    endpoint secret does not open."""
    aia = await reg.store.issue_endpoint_key(GRPC)
    mtl = await reg.store.issue_endpoint_key(WEBHOOK)
    await _copy_sealed_secret(reg, aia.key_id, mtl.key_id)
    assert await reg.store.endpoint_key(WEBHOOK) is None
    assert await RegistryStore(reg.pool, SecretBox(os.urandom(32))).endpoint_key(GRPC) is None
    assert await reg.store.endpoint_key(GRPC) == aia


async def test_a_principal_is_read_with_its_accepted_keys_in_order(reg: Reg) -> None:
    """One statement carries the principal and its encryption keys: the current
    key, the previous one (with the time it became previous), never a retired one."""
    publics = []
    for n in (1, 2, 3):
        _, public = generate_encryption_key(f"{GRPC}-k{n}")
        await reg.store.add_encryption_key(GRPC, public["kid"], public)
        publics.append(public)
    aia = await reg.store.principal(GRPC)
    assert aia is not None and aia.code == GRPC and aia.role == "insurer"
    assert [(k.kid, k.status, k.public_jwk) for k in aia.keys] == [
        (publics[1]["kid"], "previous", publics[1]),
        (publics[2]["kid"], "current", publics[2]),
    ]
    assert aia.keys[0].previous_since is not None and aia.keys[1].previous_since is None
    # The list reads the same, and a principal without keys has none.
    listed = {p.code: p for p in await reg.store.principals()}
    assert listed[GRPC] == aia and listed[PULL].keys == ()
    hospitals = sorted(h.code for h in dev_hospitals())
    assert [p.code for p in await reg.store.principals("hospital")] == hospitals
    assert await reg.store.principal("NOPE") is None


async def test_principal_and_endpoint_key_read_as_the_two_reads_would(reg: Reg) -> None:
    """What the delivery layer's endpoint cache reads, in one statement."""
    _, public = generate_encryption_key(f"{GRPC}-k1")
    await reg.store.add_encryption_key(GRPC, public["kid"], public)
    first = await reg.store.issue_endpoint_key(GRPC)
    for code in (GRPC, WEBHOOK, PULL, HOSPITAL):
        assert await reg.store.principal_and_endpoint_key(code) == (
            await reg.store.principal(code),
            await reg.store.endpoint_key(code),
        )
    found = await reg.store.principal_and_endpoint_key(GRPC)
    assert found is not None and found[1] == first and found[0].keys[0].kid == public["kid"]
    assert await reg.store.principal_and_endpoint_key("NOPE") is None

    second = await reg.store.issue_endpoint_key(GRPC)  # a rotation: only the new key
    found = await reg.store.principal_and_endpoint_key(GRPC)
    assert found is not None and found[1] == second

    # A secret that does not open (copied from another row) reads as no key,
    # the principal still read.
    mtl = await reg.store.issue_endpoint_key(WEBHOOK)
    await _copy_sealed_secret(reg, second.key_id, mtl.key_id)
    found = await reg.store.principal_and_endpoint_key(WEBHOOK)
    assert found is not None and found[0].code == WEBHOOK and found[1] is None


async def test_endpoint_keys_only_for_insurers_in_the_registry(reg: Reg) -> None:
    for code in ("NOPE", HOSPITAL):
        with pytest.raises(NotFound) as err:
            await reg.store.issue_endpoint_key(code)
        assert err.value.reason == "UNKNOWN_PRINCIPAL"
    assert await reg.pool.fetchval("SELECT count(*) FROM registry.endpoint_keys") == 0


async def test_push_health_is_written_and_read(reg: Reg) -> None:
    assert await reg.store.health(GRPC) is None
    await reg.store.set_push_health(GRPC, "degraded", 2)
    h = await reg.store.health(GRPC)
    assert h is not None and (h.health, h.consecutive_failures) == ("degraded", 2)
    assert h.last_failure_at is not None and h.last_success_at is None and h.last_pull_at is None
    await reg.store.set_push_health(GRPC, "down", 5)
    await reg.store.set_push_health(WEBHOOK, "healthy", 0)
    await reg.store.set_push_health(GRPC, "healthy", 0)
    h = await reg.store.health(GRPC)
    assert h is not None and (h.health, h.consecutive_failures) == ("healthy", 0)
    assert h.last_success_at is not None and h.last_failure_at is not None  # both kept
    healths = await reg.store.healths()
    assert {c: v.health for c, v in healths.items()} == {GRPC: "healthy", WEBHOOK: "healthy"}


@pytest.mark.parametrize(
    ("code", "health", "failures", "error", "reason"),
    [
        (GRPC, "sick", 1, InvalidArgument, "HEALTH_INVALID"),
        (GRPC, "HEALTHY", 0, InvalidArgument, "HEALTH_INVALID"),
        (GRPC, "down", -1, InvalidArgument, "HEALTH_INVALID"),
        ("NOPE", "down", 5, NotFound, "UNKNOWN_PRINCIPAL"),
    ],
)
async def test_bad_health_writes_are_refused(
    reg: Reg, code: str, health: str, failures: int, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error) as err:
        await reg.store.set_push_health(code, health, failures)
    assert getattr(err.value, "reason", None) == reason
    assert await reg.store.healths() == {}


async def test_record_pull_stamps_last_pull_at(reg: Reg) -> None:
    await reg.store.record_pull(PULL)
    first = await reg.store.health(PULL)
    assert first is not None and first.last_pull_at is not None and first.health == "unknown"
    await asyncio.sleep(0.01)
    await reg.store.record_pull(PULL)
    second = await reg.store.health(PULL)
    assert second is not None and second.last_pull_at is not None
    assert second.last_pull_at > first.last_pull_at
    with pytest.raises(NotFound):
        await reg.store.record_pull("NOPE")


async def test_directory_cache_carries_endpoints_health_and_keys_within_its_ttl(reg: Reg) -> None:
    cache = DirectoryCache(reg.store, ttl_s=0.3)
    await reg.store.set_endpoint(GRPC, endpoint="claims.aia.example:443", endpoint_mtls=True)
    await reg.store.set_push_health(GRPC, "down", 5)
    key1 = await reg.store.issue_endpoint_key(GRPC)

    aia = await cache.get(GRPC)
    assert aia is not None and (aia.endpoint, aia.endpoint_mtls) == ("claims.aia.example:443", True)
    assert (await cache.healths())[GRPC].health == "down"
    assert await cache.endpoint_key(GRPC) == key1
    assert await cache.endpoint_key("NOPE") is None
    assert await cache.endpoint_key(HOSPITAL) is None

    await reg.store.set_endpoint(GRPC, endpoint="claims2.aia.example:443")
    await reg.store.set_push_health(GRPC, "healthy", 0)
    key2 = await reg.store.issue_endpoint_key(GRPC)
    await asyncio.sleep(0.35)  # past the TTL
    aia = await cache.get(GRPC)
    assert aia is not None and aia.endpoint == "claims2.aia.example:443"
    assert (await cache.healths())[GRPC].health == "healthy"
    assert await cache.endpoint_key(GRPC) == key2


def test_directory_cache_ttl_is_bounded(reg: Reg) -> None:
    DirectoryCache(reg.store, ttl_s=MAX_TTL_S)
    with pytest.raises(ValueError):
        DirectoryCache(reg.store, ttl_s=MAX_TTL_S + 0.1)


async def test_no_private_key_material_in_registry_tables(reg: Reg) -> None:
    """What the registry stores for participants is public (JWKs) or sealed
    (signing and endpoint secrets)."""
    private, public = generate_encryption_key(f"{GRPC}-k1")
    await reg.store.add_encryption_key(GRPC, public["kid"], public)
    key = await reg.store.issue_endpoint_key(GRPC)
    rows = []
    for table in ("principals", "encryption_keys", "endpoint_keys", "insurer_health"):
        rows += await reg.pool.fetch(f"SELECT * FROM registry.{table}")
    dump = " ".join(str(dict(r)) for r in rows)
    assert private["d"] not in dump
    assert key.secret.hex() not in dump and repr(key.secret) not in dump


async def test_principal_defaults_keep_old_callers_working(reg: Reg) -> None:
    # Principals built without the new fields (tests, seeding) get empty endpoints.
    await reg.store.upsert_principal(Principal("NEWP", "insurer", "New Pull", line=2, delivery_mode="pull"))
    p = await reg.store.principal("NEWP")
    assert p is not None and (p.endpoint, p.endpoint_ca_pem, p.endpoint_mtls) == ("", "", False)
