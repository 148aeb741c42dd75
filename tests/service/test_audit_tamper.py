"""Tampering with the stored log as a PostgreSQL superuser (triggers bypassed)
makes `iclaim audit verify` fail and name the entry; an untouched log verifies."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import asyncpg
import pytest

from iclaim.audit.entry import AuditEntry, entry_leaf_hash
from iclaim.audit.merkle import EMPTY_ROOT
from iclaim.audit.note import Checkpoint, NoteSigner, sign_checkpoint
from iclaim.cli import build_parser
from iclaim_ops.audit_cli import verify_database
from iclaim_hub.internal.v1 import audit_log_pb2 as pb
from tests.support.audit import audit_server, event


async def _seed(database_url: str) -> None:
    async with audit_server(database_url) as (_running, stub):
        await stub.Append(pb.AppendRequest(events=[event(i) for i in range(20)]))
        await stub.SignCheckpoint(pb.SignCheckpointRequest())
        await stub.Append(pb.AppendRequest(events=[event(i) for i in range(20, 40)]))
        await stub.SignCheckpoint(pb.SignCheckpointRequest())


async def _as_superuser(database_url: str, *sqls: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            # Replica mode skips user triggers and FK checks: what an attacker with
            # superuser rights would do.
            await conn.execute("SET LOCAL session_replication_role = replica")
            for sql in sqls:
                await conn.execute(sql)
    finally:
        await conn.close()


def _cli(database_url: str) -> argparse.Namespace:
    return build_parser().parse_args(["audit", "verify", "--database-url", database_url])


async def test_untouched_log_verifies(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await _seed(database_url)
    report, _ = await verify_database(database_url)
    assert report.ok, report.findings
    assert (report.entries, report.checkpoints, report.latest_checkpoint_size) == (40, 3, 40)
    args = _cli(database_url)
    assert await _run_cli(args) == 0
    assert "OK: 40 entries" in capsys.readouterr().out


async def _run_cli(args: argparse.Namespace) -> int:
    # The command runs its own event loop, as under the real `iclaim` entry point.
    return int(await asyncio.to_thread(args.func, args))


SWAP_DATA = (
    "UPDATE audit.entry_data SET leaf_index = CASE leaf_index WHEN 13 THEN 1000000 ELSE 13 END"
    " WHERE leaf_index IN (13, 14)",
    "UPDATE audit.entry_data SET leaf_index = 14 WHERE leaf_index = 1000000",
)
SWAP_ROWS = (
    # Move entry 14 (data and hash) to position 13 and vice versa.
    "UPDATE audit.leaves SET leaf_index = 1000000 WHERE leaf_index = 13",
    "UPDATE audit.leaves SET leaf_index = 13 WHERE leaf_index = 14",
    "UPDATE audit.leaves SET leaf_index = 14 WHERE leaf_index = 1000000",
    *SWAP_DATA,
)


@pytest.mark.parametrize(
    "sqls,bad_index",
    [
        (("UPDATE audit.entry_data SET outcome_code = 'PERMISSION_DENIED' WHERE leaf_index = 13",), 13),
        (("UPDATE audit.entry_data SET occurred_at_us = occurred_at_us + 1 WHERE leaf_index = 27",), 27),
        (("UPDATE audit.entry_data SET origin_principal = '10999' WHERE leaf_index = 0",), 0),
        (("UPDATE audit.leaves SET leaf_hash = sha256('x') WHERE leaf_index = 5",), 5),
        (("UPDATE audit.leaves SET event_id = 'ev-x' WHERE leaf_index = 8",), 8),
        (("DELETE FROM audit.entry_data WHERE leaf_index = 13",), 13),
        (
            (
                "DELETE FROM audit.entry_data WHERE leaf_index = 13",
                "DELETE FROM audit.nodes WHERE idx >= 0 AND level = 1 AND idx = 6",
                "DELETE FROM audit.leaves WHERE leaf_index = 13",
            ),
            13,
        ),
        (
            (
                "DELETE FROM audit.entry_data WHERE leaf_index = 39",
                "DELETE FROM audit.leaves WHERE leaf_index = 39",
            ),
            39,
        ),
        (SWAP_DATA, 13),
        (SWAP_ROWS, 13),
        (
            (
                "INSERT INTO audit.expired (leaf_index) VALUES (21)",
                "DELETE FROM audit.entry_data WHERE leaf_index = 22",
            ),
            22,
        ),
    ],
    ids=[
        "change-outcome",
        "change-time",
        "change-principal",
        "change-leaf-hash",
        "change-event-id",
        "delete-data",
        "delete-entry",
        "delete-last-entry",
        "reorder-data",
        "reorder-rows",
        "delete-data-beside-expiry-marker",
    ],
)
async def test_tampering_is_named(
    database_url: str,
    sqls: tuple[str, ...],
    bad_index: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await _seed(database_url)
    await _as_superuser(database_url, *sqls)
    report, _ = await verify_database(database_url)
    assert not report.ok
    assert report.first_bad is not None and report.first_bad.leaf_index == bad_index, report.findings
    assert await _run_cli(_cli(database_url)) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^FAIL: first bad entry {bad_index}\b", out, re.M), out


async def test_rewriting_data_and_hash_is_caught_by_the_signed_checkpoint(
    database_url: str,
) -> None:
    """An attacker who recomputes the leaf hash still cannot match the signed root."""
    await _seed(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT l.event_id, d.* FROM audit.leaves l JOIN audit.entry_data d USING (leaf_index)"
            " WHERE leaf_index = 13"
        )
    finally:
        await conn.close()
    forged = AuditEntry(
        **{k: row[k] for k in AuditEntry.__dataclass_fields__} | {"outcome_code": "PERMISSION_DENIED"}
    )
    new_hash = entry_leaf_hash(forged, 13).hex()
    await _as_superuser(
        database_url,
        "UPDATE audit.entry_data SET outcome_code = 'PERMISSION_DENIED' WHERE leaf_index = 13",
        f"UPDATE audit.leaves SET leaf_hash = '\\x{new_hash}'::bytea WHERE leaf_index = 13",
    )
    report, _ = await verify_database(database_url)
    assert not report.ok
    assert "signed checkpoint at size 20" in str(report.first_bad)
    assert "[0, 20)" in str(report.first_bad)


async def test_forged_checkpoint_is_rejected(database_url: str) -> None:
    await _seed(database_url)
    from datetime import UTC, datetime

    other = NoteSigner.generate("iclaim.dev/audit")
    note = sign_checkpoint(other, Checkpoint("iclaim.dev/audit", 41, EMPTY_ROOT, datetime.now(UTC)))
    await _as_superuser(
        database_url,
        "INSERT INTO audit.checkpoints (tree_size, root_hash, signed_at, note)"
        f" VALUES (41, sha256(''), now(), $${note}$$)",
    )
    report, _ = await verify_database(database_url)
    assert not report.ok
    assert "does not verify" in str(report.first_bad)


async def test_pinned_key_rejects_a_swapped_database_key(database_url: str) -> None:
    await _seed(database_url)
    _, pinned = await verify_database(database_url)
    other = NoteSigner.generate("iclaim.dev/audit")
    await _as_superuser(
        database_url,
        f"UPDATE audit.signing_keys SET public_key = '\\x{other.public_key.hex()}'::bytea",
    )
    report, _ = await verify_database(database_url, verifier_key=pinned)
    assert report.ok  # the pinned key still verifies the genuine checkpoints
    report, _ = await verify_database(database_url)
    assert not report.ok  # the swapped key does not


async def test_witness_file_catches_a_truncated_history(database_url: str, tmp_path: Path) -> None:
    """Dropping the newest entries together with their checkpoints leaves a log
    that is consistent in itself; a verifier that kept its last checkpoint
    outside the database still notices."""
    witness = tmp_path / "audit-witness.note"
    await _seed(database_url)
    report, _ = await verify_database(database_url, witness_file=str(witness))
    assert report.ok and "\n40\n" in witness.read_text()

    await _as_superuser(
        database_url,
        "DELETE FROM audit.checkpoints WHERE tree_size = 40",
        "DELETE FROM audit.nodes WHERE (idx + 1) * (1::bigint << level) > 20",
        "DELETE FROM audit.entry_data WHERE leaf_index >= 20",
        "DELETE FROM audit.leaves WHERE leaf_index >= 20",
    )
    report, _ = await verify_database(database_url)
    assert report.ok  # without a witness the shorter log looks fine
    report, _ = await verify_database(database_url, witness_file=str(witness))
    assert not report.ok
    assert report.first_bad is not None and report.first_bad.leaf_index == 20
    assert "\n40\n" in witness.read_text()  # a failed run does not move the witness
