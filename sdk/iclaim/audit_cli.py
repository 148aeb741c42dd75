"""`iclaim audit trail`: a participant fetches and proves its own audit entries
through the gateway (docs/protocol.md §12)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from iclaim.audit.note import NoteError
from iclaim.audit.trail import DEFAULT_ORIGIN, TrailReport, TrailSource, verify_trail
from iclaim.cli_groups import CommandGroups
from iclaim.progress import progress


def add_trail_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transaction-id", default="")
    parser.add_argument("--verifier-key", default=os.environ.get("ICLAIM_AUDIT_VERIFIER_KEY"))
    parser.add_argument("--origin", default=os.environ.get("ICLAIM_AUDIT_ORIGIN", DEFAULT_ORIGIN))


def register(groups: CommandGroups) -> None:
    trail = groups.group("audit", "audit log: trails, verification").add_parser(
        "trail", help="fetch and verify your own entries (inclusion proofs)"
    )
    add_trail_options(trail)
    trail.set_defaults(func=lambda a: asyncio.run(_trail_cmd(a)))


async def prove_and_print(source: TrailSource, principal: str, args: argparse.Namespace) -> int:
    try:
        # One inclusion proof per entry: a bar on a terminal, else a line every 5 s / 10 %.
        with progress("audit trail") as shown:
            report: TrailReport = await verify_trail(
                source, principal, args.verifier_key, args.origin, args.transaction_id, shown
            )
    except NoteError as exc:
        print(f"FAIL: checkpoint: {exc}", file=sys.stderr)
        return 1
    if not args.verifier_key:
        print("note: trusting the verifier key the service sent; pin it with --verifier-key", file=sys.stderr)
    status = "OK" if report.ok else "FAIL"
    print(
        f"{status}: {report.verified} entries of {principal} proved in the log at size "
        f"{report.tree_size} ({report.expired} expired)"
    )
    for p in report.problems:
        print(f"  - {p}")
    return 0 if report.ok else 1


async def _trail_cmd(args: argparse.Namespace) -> int:
    from iclaim.audit.trail import GatewayTrail
    from iclaim.client.channel import gateway_channel
    from iclaim.client.credentials import load_dev_credentials

    creds = load_dev_credentials(args.as_, args.credentials)
    async with gateway_channel(creds) as channel:
        return await prove_and_print(GatewayTrail(channel), creds.code, args)
