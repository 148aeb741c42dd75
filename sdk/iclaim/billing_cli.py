"""`iclaim billing statement`: a statement with a counterparty, through the
gateway, signed as the caller (docs/protocol.md §9)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

from google.type import date_pb2

from iclaim.cli_groups import CommandGroups
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import billing_service_pb2_grpc

RPC_TIMEOUT_S = 30.0
BANGKOK_TZ = "Asia/Bangkok"


def register(groups: CommandGroups) -> None:
    st = groups.group("billing", "billing: statements, reconciliation").add_parser(
        "statement", help="statement with a counterparty for a period"
    )
    st.add_argument(
        "--counterparty", required=True, help="insurer code (as a hospital) or hospital code (as an insurer)"
    )
    st.add_argument("--from", dest="start", required=True, type=_day, help="YYYY-MM-DD")
    st.add_argument("--to", dest="end", required=True, type=_day, help="YYYY-MM-DD (inclusive)")
    st.add_argument("--csv", action="store_true", help="CSV instead of a table")
    st.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    st.set_defaults(func=run)


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {raw!r}") from None


def thb(satang: int) -> str:
    """Exact decimal THB from satang (never through float)."""
    sign = "-" if satang < 0 else ""
    baht, st = divmod(abs(satang), 100)
    return f"{sign}{baht}.{st:02d}"


# --- the RPC: one function over a stub, so any signed channel can drive it -----
async def fetch_statement(
    stub: billing_service_pb2_grpc.BillingServiceAsyncStub, counterparty: str, start: date, end: date
) -> pb.Statement:
    statement: pb.Statement = await stub.GetStatement(
        pb.GetStatementRequest(
            counterparty_code=counterparty,
            period_start=date_pb2.Date(year=start.year, month=start.month, day=start.day),
            period_end=date_pb2.Date(year=end.year, month=end.month, day=end.day),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    return statement


def _local(ts: Any) -> str:
    from zoneinfo import ZoneInfo

    dt: datetime = ts.ToDatetime(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(BANGKOK_TZ))
    return dt.isoformat(timespec="seconds")


def _gdate(d: date_pb2.Date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def statement_csv(s: pb.Statement, out: TextIO) -> None:
    """One table: OPENING, each movement with its running balance, CLOSING,
    then the aging buckets. Amounts in THB with two decimals."""
    w = csv.writer(out)
    w.writerow(["occurred_at", "kind", "reference", "description", "amount_thb", "running_balance_thb"])
    w.writerow(
        [
            _gdate(s.period_start),
            "OPENING",
            f"{s.hospital_code}/{s.insurer_code}",
            "opening balance",
            "",
            thb(s.opening_balance_satang),
        ]
    )
    for ln in s.lines:
        w.writerow(
            [
                _local(ln.occurred_at),
                ln.kind,
                ln.reference,
                ln.description,
                thb(ln.amount_satang),
                thb(ln.running_balance_satang),
            ]
        )
    w.writerow(
        [
            _gdate(s.period_end),
            "CLOSING",
            f"{s.hospital_code}/{s.insurer_code}",
            s.closing_balance_text_th,
            "",
            thb(s.closing_balance_satang),
        ]
    )
    a = s.aging
    for name, value in (
        ("current", a.current),
        ("1-30", a.d1_30),
        ("31-60", a.d31_60),
        ("61-90", a.d61_90),
        ("over 90", a.over_90),
    ):
        w.writerow([_gdate(s.period_end), "AGING", name, f"days past due: {name}", thb(value), ""])


def statement_table(s: pb.Statement, out: TextIO) -> None:
    print(
        f"Statement {s.hospital_code} / {s.insurer_code}  {_gdate(s.period_start)} .. {_gdate(s.period_end)}",
        file=out,
    )
    print(f"{'opening':<60}{thb(s.opening_balance_satang):>18}", file=out)
    for ln in s.lines:
        print(
            f"{_local(ln.occurred_at)[:16]} {ln.kind:<10} {ln.reference[:28]:<28} "
            f"{thb(ln.amount_satang):>14} {thb(ln.running_balance_satang):>14}",
            file=out,
        )
    print(f"{'closing':<60}{thb(s.closing_balance_satang):>18}", file=out)
    print(f"  ({s.closing_balance_text_th})", file=out)
    a = s.aging
    print(
        f"aging: current {thb(a.current)}  1-30 {thb(a.d1_30)}  31-60 {thb(a.d31_60)}  "
        f"61-90 {thb(a.d61_90)}  >90 {thb(a.over_90)}",
        file=out,
    )


async def _statement(args: argparse.Namespace) -> int:
    from iclaim.client.channel import gateway_channel
    from iclaim.client.credentials import DEV_CREDENTIALS, load_dev_credentials

    creds = load_dev_credentials(
        getattr(args, "as_", None), getattr(args, "credentials", None) or DEV_CREDENTIALS
    )
    async with gateway_channel(creds) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        s = await fetch_statement(stub, args.counterparty, args.start, args.end)
    emit(args, lambda out: (statement_csv if args.csv else statement_table)(s, out))
    return 0


def emit(args: argparse.Namespace, write: Any) -> None:
    if args.out is None:
        write(sys.stdout)
        return
    buf = io.StringIO()
    write(buf)
    args.out.write_text(buf.getvalue(), encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_statement(args))
