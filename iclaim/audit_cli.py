"""`iclaim audit ...`: verify the log, fetch checkpoints, verify one's own trail.

Wire into the main CLI with `register(subparsers)`; dispatch with `run(args)`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from iclaim.audit.entry import AuditEntry, entry_leaf_hash
from iclaim.audit.wire import entry_of_event
from iclaim.audit.merkle import MerkleError, verify_inclusion
from iclaim.audit.note import (
    NoteError,
    NoteVerifier,
    encode_verifier_key,
    open_checkpoint,
    parse_verifier_key,
)
from iclaim.audit.verifier import VerifyReport, verify_log

DEFAULT_ORIGIN = "iclaim.dev/audit"
DEFAULT_TARGET = "127.0.0.1:50071"
RPC_TIMEOUT_S = 10.0


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="audit log: verify, checkpoints, trails")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    verify = sub.add_parser(
        "verify", help="check every stored entry against the signed checkpoints"
    )
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

    cp = sub.add_parser("checkpoint", help="print the latest signed checkpoint")
    cp.add_argument("--target", default=os.environ.get("ICLAIM_AUDIT_TARGET", DEFAULT_TARGET))
    cp.add_argument("--sign", action="store_true", help="sign a fresh checkpoint first")

    trail = sub.add_parser(
        "trail", help="fetch and verify one principal's own entries (inclusion proofs)"
    )
    trail.add_argument(
        "--principal", default=None, help="default: the principal of --as (through the gateway)"
    )
    trail.add_argument("--transaction-id", default="")
    trail.add_argument(
        "--target",
        default=None,
        help="the internal audit service (operators); default: the public trail via the gateway",
    )
    trail.add_argument("--verifier-key", default=os.environ.get("ICLAIM_AUDIT_VERIFIER_KEY"))
    trail.add_argument("--origin", default=os.environ.get("ICLAIM_AUDIT_ORIGIN", DEFAULT_ORIGIN))
    audit.set_defaults(audit_run=run, func=run)


def run(args: argparse.Namespace) -> int:
    cmd = args.audit_command
    if cmd == "verify":
        return asyncio.run(_verify_cmd(args))
    if cmd == "checkpoint":
        return asyncio.run(_checkpoint_cmd(args))
    if cmd == "trail":
        return asyncio.run(_trail_cmd(args))
    print(f"unknown audit command {cmd}", file=sys.stderr)
    return 2


# --- verify (reads PostgreSQL directly, read-only) ------------------------------


async def verify_database(
    database_url: str,
    verifier_key: str | None = None,
    origin: str = DEFAULT_ORIGIN,
    witness_file: str | None = None,
) -> tuple[VerifyReport, str]:
    """Returns the report and the verifier key it trusted. With `witness_file`,
    the checkpoint saved there by the previous run must still be in the log, and
    on success the latest checkpoint is saved there."""
    from iclaim.common.db import create_pool
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
        witnessed = [witness.read_text()] if witness and witness.exists() else []
        report = await verify_log(store, verifier, origin, witnessed)
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
        report, vkey = await verify_database(
            args.database_url, args.verifier_key, args.origin, args.witness_file
        )
    except NoteError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    except asyncpg.UndefinedTableError:
        print("no audit log in that database (schema audit is missing)", file=sys.stderr)
        return 2
    if not args.verifier_key:
        print(f"note: trusting the key stored in the database: {vkey} (pin it with "
              "--verifier-key)", file=sys.stderr)
    print(report.summary())
    for f in report.findings:
        print(f"  - {f}")
    return 0 if report.ok else 1


# --- gRPC helpers ---------------------------------------------------------------


def _stub(target: str) -> tuple[Any, Any]:
    import grpc

    from iclaim.common.server import CLIENT_OPTIONS
    from iclaim.internal.v1 import audit_log_pb2_grpc

    channel = grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS)
    return channel, audit_log_pb2_grpc.AuditLogServiceStub(channel)


async def _checkpoint_cmd(args: argparse.Namespace) -> int:
    from iclaim.internal.v1 import audit_log_pb2 as pb

    channel, stub = _stub(args.target)
    async with channel:
        if args.sign:
            resp = await stub.SignCheckpoint(pb.SignCheckpointRequest(), timeout=RPC_TIMEOUT_S)
        else:
            resp = await stub.GetCheckpoint(pb.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
    print(resp.checkpoint.note, end="")
    print(f"verifier key: {resp.checkpoint.verifier_key}")
    return 0


@dataclass
class TrailReport:
    tree_size: int = 0
    verified: int = 0
    expired: int = 0
    problems: list[str] = field(default_factory=list)
    entries: list[AuditEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_trail(
    stub: Any,
    principal: str,
    verifier_key: str | None,
    origin: str = DEFAULT_ORIGIN,
    transaction_id: str = "",
) -> TrailReport:
    """Fetches one principal's entries and proves each is in the signed log."""
    from iclaim.internal.v1 import audit_log_pb2 as pb

    report = TrailReport()
    resp = await stub.GetCheckpoint(pb.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
    verifier = parse_verifier_key(verifier_key or resp.checkpoint.verifier_key)
    cp = open_checkpoint(resp.checkpoint.note, verifier, origin)
    report.tree_size = cp.tree_size
    if transaction_id:
        got = await stub.ListEntriesByTransaction(
            pb.ListEntriesByTransactionRequest(transaction_id=transaction_id, principal=principal),
            timeout=RPC_TIMEOUT_S,
        )
        entries = [e for e in got.entries if e.leaf_index < cp.tree_size]
    else:
        entries, start = [], 0
        while start < cp.tree_size:
            page = await stub.ListEntries(
                pb.ListEntriesRequest(start_index=start, max_entries=1000, principal=principal),
                timeout=RPC_TIMEOUT_S,
            )
            entries.extend(e for e in page.entries if e.leaf_index < cp.tree_size)
            if page.next_start_index <= start:
                break
            start = page.next_start_index
    for e in entries:
        where = f"entry {e.leaf_index} (event {e.event.event_id})"
        if e.expired:
            report.expired += 1
            continue
        entry = entry_of_event(e.event)
        if principal not in (entry.origin_principal, entry.destination):
            report.problems.append(f"{where}: not {principal}'s entry")
            continue
        if entry_leaf_hash(entry, e.leaf_index) != e.leaf_hash:
            report.problems.append(f"{where}: data does not match its leaf hash")
            continue
        proof = await stub.GetInclusionProof(
            pb.GetInclusionProofRequest(
                leaf_index=e.leaf_index, tree_size=cp.tree_size, principal=principal
            ),
            timeout=RPC_TIMEOUT_S,
        )
        try:
            verify_inclusion(e.leaf_index, cp.tree_size, e.leaf_hash, list(proof.proof),
                             cp.root_hash)
        except MerkleError as exc:
            report.problems.append(f"{where}: not in the signed log: {exc}")
            continue
        report.verified += 1
        report.entries.append(entry)
    return report


def _gateway_stub(args: argparse.Namespace) -> tuple[Any, Any]:
    from iclaim.audit.gateway_trail import GatewayTrailStub
    from iclaim.client.channel import gateway_channel
    from iclaim.client.credentials import load_dev_credentials

    creds = load_dev_credentials(getattr(args, "as_", None), getattr(args, "credentials", None))
    if args.principal not in (None, creds.code):
        raise SystemExit("through the gateway a principal sees only its own trail")
    args.principal = creds.code
    channel = gateway_channel(creds)
    return channel, GatewayTrailStub(channel)


async def _trail_cmd(args: argparse.Namespace) -> int:
    if args.target:
        if not args.principal:
            print("--principal is required with --target", file=sys.stderr)
            return 2
        channel, stub = _stub(args.target)
    else:
        channel, stub = _gateway_stub(args)
    async with channel:
        try:
            report = await verify_trail(
                stub, args.principal, args.verifier_key, args.origin, args.transaction_id
            )
        except NoteError as exc:
            print(f"FAIL: checkpoint: {exc}", file=sys.stderr)
            return 1
    if not args.verifier_key:
        print("note: trusting the verifier key the service sent; pin it with --verifier-key",
              file=sys.stderr)
    status = "OK" if report.ok else "FAIL"
    print(f"{status}: {report.verified} entries of {args.principal} proved in the log at size "
          f"{report.tree_size} ({report.expired} expired)")
    for p in report.problems:
        print(f"  - {p}")
    return 0 if report.ok else 1
