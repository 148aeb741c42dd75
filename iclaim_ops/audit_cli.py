"""Operator audit commands: `iclaim audit verify` (reads PostgreSQL),
`audit checkpoint` and `audit operator-trail` (the internal audit service)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from iclaim.audit.note import NoteError, NoteVerifier, encode_verifier_key, parse_verifier_key
from iclaim.audit.trail import DEFAULT_ORIGIN, RPC_TIMEOUT_S, TrailItem, TrailPage
from iclaim.audit.verifier import VerifyReport, verify_log
from iclaim.audit_cli import add_trail_options, prove_and_print
from iclaim.cli_groups import CommandGroups
from iclaim.progress import ProgressSink, progress
from iclaim_hub.audit.wire import entry_of_event
from iclaim_hub.internal.v1 import audit_log_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50071"


def register(groups: CommandGroups) -> None:
    sub = groups.group("audit", "audit log: trails, verification")
    verify = sub.add_parser("verify", help="check every stored entry against the signed checkpoints")
    verify.add_argument("--database-url", default=os.environ.get("ICLAIM_DATABASE_URL"))
    verify.add_argument(
        "--verifier-key",
        default=os.environ.get("ICLAIM_AUDIT_VERIFIER_KEY"),
        help="pinned note verifier key (name+id+key); default: the key stored in the database",
    )
    verify.add_argument("--origin", default=os.environ.get("ICLAIM_AUDIT_ORIGIN", DEFAULT_ORIGIN))
    verify.add_argument(
        "--witness-file",
        default=os.environ.get("ICLAIM_AUDIT_WITNESS_FILE"),
        help="keep the latest verified checkpoint here (outside the database) and require "
        "the log to stay consistent with it on every later run",
    )
    verify.set_defaults(func=lambda a: asyncio.run(_verify_cmd(a)))

    cp = sub.add_parser("checkpoint", help="print the latest signed checkpoint")
    cp.add_argument("--target", default=os.environ.get("ICLAIM_AUDIT_TARGET", DEFAULT_TARGET))
    cp.add_argument("--sign", action="store_true", help="sign a fresh checkpoint first")
    cp.set_defaults(func=lambda a: asyncio.run(_checkpoint_cmd(a)))

    trail = sub.add_parser(
        "operator-trail", help="prove any principal's entries over the internal audit service"
    )
    trail.add_argument("--principal", required=True)
    trail.add_argument("--target", default=os.environ.get("ICLAIM_AUDIT_TARGET", DEFAULT_TARGET))
    add_trail_options(trail)
    trail.set_defaults(func=lambda a: asyncio.run(_operator_trail_cmd(a)))


# --- verify (reads PostgreSQL directly, read-only) ------------------------------


async def verify_database(
    database_url: str,
    verifier_key: str | None = None,
    origin: str = DEFAULT_ORIGIN,
    witness_file: str | None = None,
    progress: ProgressSink | None = None,
    witnessed: Sequence[str] = (),
) -> tuple[VerifyReport, str]:
    """Returns the report and the verifier key it trusted. With `witness_file`,
    the checkpoint saved there by the previous run must still be in the log, and
    on success the latest checkpoint is saved there; `witnessed` adds checkpoint
    notes the caller kept itself. `progress` sees the entries checked out of the
    log's size."""
    from iclaim_hub.common.db import create_pool
    from services.audit_log.proofs import VerifiableLog
    from services.audit_log.store import AuditStore

    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        store = AuditStore(pool)
        if verifier_key:
            verifier = parse_verifier_key(verifier_key)
        else:
            public = await store.public_key(origin)
            if public is None:
                raise NoteError(f"no checkpoint key named {origin!r} in the database")
            verifier = NoteVerifier(origin, public)
        witness = Path(witness_file) if witness_file else None
        kept = [witness.read_text()] if witness and witness.exists() else []
        if progress is not None:
            progress.set_total(await store.tree_size())
        report = await verify_log(VerifiableLog(store), verifier, origin, [*kept, *witnessed], progress)
        if witness is not None and report.ok:
            notes = await store.checkpoint_notes()
            if notes:
                tmp = witness.with_name(witness.name + ".tmp")
                tmp.write_text(notes[-1])
                tmp.replace(witness)
        return report, encode_verifier_key(verifier.name, verifier.public_key)
    finally:
        await pool.close()


async def _verify_cmd(args: argparse.Namespace) -> int:
    if not args.database_url:
        print("set --database-url or ICLAIM_DATABASE_URL", file=sys.stderr)
        return 2
    try:
        # About a minute per million entries: a bar on a terminal, else a line every 5 s / 10 %.
        with progress("audit verify") as shown:
            report, vkey = await verify_database(
                args.database_url, args.verifier_key, args.origin, args.witness_file, shown
            )
    except NoteError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError:
        print("no audit log in that database (schema audit is missing)", file=sys.stderr)
        return 2
    if not args.verifier_key:
        print(
            f"note: trusting the key stored in the database: {vkey} (pin it with --verifier-key)",
            file=sys.stderr,
        )
    print(report.summary())
    for f in report.findings:
        print(f"  - {f}")
    return 0 if report.ok else 1


# --- gRPC helpers ---------------------------------------------------------------


def _stub(target: str) -> tuple[Any, Any]:
    import grpc

    from iclaim.limits import CLIENT_OPTIONS
    from iclaim_hub.internal.v1 import audit_log_pb2_grpc

    channel = grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS)
    return channel, audit_log_pb2_grpc.AuditLogServiceStub(channel)


async def _checkpoint_cmd(args: argparse.Namespace) -> int:
    channel, stub = _stub(args.target)
    async with channel:
        if args.sign:
            resp = await stub.SignCheckpoint(pb.SignCheckpointRequest(), timeout=RPC_TIMEOUT_S)
        else:
            resp = await stub.GetCheckpoint(pb.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
    print(resp.checkpoint.note, end="")
    print(f"verifier key: {resp.checkpoint.verifier_key}")
    return 0


class InternalTrail:
    """An operator's view of any principal's trail over the internal AuditLogService."""

    def __init__(self, stub: Any, principal: str) -> None:
        self._stub, self._principal = stub, principal

    async def checkpoint(self) -> tuple[str, str]:
        resp = await self._stub.GetCheckpoint(pb.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
        return resp.checkpoint.note, resp.checkpoint.verifier_key

    async def page(self, start_index: int, max_entries: int) -> TrailPage:
        got = await self._stub.ListEntries(
            pb.ListEntriesRequest(
                start_index=start_index, max_entries=max_entries, principal=self._principal
            ),
            timeout=RPC_TIMEOUT_S,
        )
        return TrailPage([_item(e) for e in got.entries], got.next_start_index)

    async def by_transaction(self, transaction_id: str) -> list[TrailItem]:
        got = await self._stub.ListEntriesByTransaction(
            pb.ListEntriesByTransactionRequest(transaction_id=transaction_id, principal=self._principal),
            timeout=RPC_TIMEOUT_S,
        )
        return [_item(e) for e in got.entries]

    async def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        got = await self._stub.GetInclusionProof(
            pb.GetInclusionProofRequest(
                leaf_index=leaf_index, tree_size=tree_size, principal=self._principal
            ),
            timeout=RPC_TIMEOUT_S,
        )
        return list(got.proof)


def _item(e: pb.LogEntry) -> TrailItem:
    entry = None if e.expired else entry_of_event(e.event)
    return TrailItem(e.leaf_index, e.leaf_hash, e.event.event_id, entry)


async def _operator_trail_cmd(args: argparse.Namespace) -> int:
    channel, stub = _stub(args.target)
    async with channel:
        return await prove_and_print(InternalTrail(stub, args.principal), args.principal, args)
