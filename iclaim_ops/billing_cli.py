"""`iclaim billing reconcile --month`: finance staff's monthly reconciliation,
read straight from the billing database (operators)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
from pathlib import Path
from typing import TextIO

from iclaim.billing_cli import emit, thb
from iclaim.cli_groups import CommandGroups
from iclaim.errors import IclaimError


def register(groups: CommandGroups) -> None:
    rec = groups.group("billing", "billing: statements, reconciliation").add_parser(
        "reconcile", help="monthly reconciliation (reads the billing DB)"
    )
    rec.add_argument("--month", required=True, help="YYYY-MM")
    rec.add_argument("--database-url", default=os.environ.get("ICLAIM_DATABASE_URL"))
    rec.add_argument("--csv", action="store_true")
    rec.add_argument("--out", type=Path, default=None)
    rec.set_defaults(func=run)


async def run_async(args: argparse.Namespace) -> int:
    try:
        return await _reconcile(args)
    except IclaimError as err:  # e.g. a bad --month
        print(f"error: {err.reason}: {err.message}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    return asyncio.run(run_async(args))


async def _reconcile(args: argparse.Namespace) -> int:
    from iclaim_hub.common.db import create_pool
    from services.billing.store import PgBillingStore
    from services.billing.usecases import Billing

    if not args.database_url:
        print("error: --database-url or ICLAIM_DATABASE_URL is required", file=sys.stderr)
        return 2
    pool = await create_pool(args.database_url, max_size=2)
    try:
        rec = await Billing(PgBillingStore(pool)).reconcile(args.month)
    finally:
        await pool.close()

    def write(out: TextIO) -> None:
        if args.csv:
            w = csv.writer(out)
            w.writerow(["month", "finding", "hospital", "insurer", "reference", "amount_thb", "detail"])
            for f in rec.findings:
                w.writerow(
                    [rec.month, f.kind, f.hospital_code, f.insurer_code, f.reference, thb(f.amount), f.detail]
                )
        else:
            print(f"Reconciliation {rec.month}: {len(rec.findings)} findings", file=out)
            for f in rec.findings:
                print(
                    f"{f.kind:<26} {f.hospital_code}/{f.insurer_code:<10} {f.reference:<24}"
                    f" {thb(f.amount):>14}  {f.detail}",
                    file=out,
                )

    emit(args, write)
    return 0
