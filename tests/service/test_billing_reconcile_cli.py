"""Finance staff's view: the statement as CSV through the CLI's RPC function,
and the monthly reconciliation from `iclaim billing reconcile`."""

from __future__ import annotations

import argparse
import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from iclaim import billing_cli
from iclaim.cli_groups import CommandGroups
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import billing_service_pb2_grpc
from iclaim_ops import billing_cli as reconcile_cli
from services.billing.domain import BANGKOK
from tests.support.billing import HOSPITAL, INSURER, md, running_billing


class _Identity(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Stands in for the gateway: adds the trusted identity headers."""

    def __init__(self, code: str) -> None:
        self._md = md(code)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=tuple(details.metadata or ()) + self._md)
        return await continuation(details, request)


def line(tx: str, paid: int) -> pb.PaymentLine:
    return pb.PaymentLine(transaction_id=tx, paid_satang=paid)


async def test_statement_csv_and_monthly_reconciliation(database_url: str, tmp_path: Path) -> None:
    async with running_billing(database_url) as h:
        now = datetime.now(UTC)
        await h.approve("tx-paid", 123_450, decided_at=now - timedelta(days=2))
        await h.approve("tx-late", 50_000, decided_at=now - timedelta(days=2))
        await h.approve("tx-loose", 7_000, decided_at=now - timedelta(days=2))
        inv = await h.invoice("INV-1", ["tx-paid", "tx-late"])
        await h.stub.AcknowledgeInvoice(
            pb.AcknowledgeInvoiceRequest(invoice_id=inv.invoice_id), metadata=md(INSURER), timeout=10
        )
        await h.pool.execute(
            "UPDATE billing.invoices SET due_date = $1", datetime.now(BANGKOK).date() - timedelta(days=3)
        )
        await h.pay(
            "TRC-1", [line("tx-paid", 123_450), line("tx-loose", 8_000)], paid_at=now - timedelta(hours=1)
        )

        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{h.billing.port}", interceptors=[_Identity(HOSPITAL)]
        ) as ch:
            today = datetime.now(BANGKOK).date()
            s = await billing_cli.fetch_statement(
                billing_service_pb2_grpc.BillingServiceStub(ch), INSURER, today - timedelta(days=7), today
            )
        buf = io.StringIO()
        billing_cli.statement_csv(s, buf)
        rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
        kinds = [r["kind"] for r in rows]
        assert kinds[0] == "OPENING" and "CLOSING" in kinds and kinds.count("AGING") == 5
        closing = next(r for r in rows if r["kind"] == "CLOSING")
        # 1,234.50 + 500.00 + 70.00 approved; 1,234.50 + 80.00 paid -> 490.00 owed.
        assert closing["running_balance_thb"] == "490.00"
        assert closing["description"] == "สี่ร้อยเก้าสิบบาทถ้วน"
        aging = {r["reference"]: r["amount_thb"] for r in rows if r["kind"] == "AGING"}
        assert aging["1-30"] == "500.00" and aging["current"] == "-10.00"

        month = today.strftime("%Y-%m")
        out = tmp_path / "rec.csv"
        args = argparse.Namespace(
            billing_command="reconcile", month=month, database_url=database_url, csv=True, out=out
        )
        assert await reconcile_cli.run_async(args) == 0
        found = list(csv.DictReader(io.StringIO(out.read_text())))
        by_kind: dict[str, list[dict[str, str]]] = {}
        for f in found:
            by_kind.setdefault(f["finding"], []).append(f)
        assert [f["reference"] for f in by_kind["APPROVED_UNPAID_PAST_DUE"]] == ["tx-late"]
        assert [f["amount_thb"] for f in by_kind["OVERPAYMENT"]] == ["10.00"]
        unmatched = {f["detail"] for f in by_kind["UNMATCHED_PAYMENT_LINE"]}
        assert unmatched == {
            "line for tx-loose exceeds what was due on it",
            "line for tx-loose names no invoiced claim",
        }

        bad = argparse.Namespace(
            billing_command="reconcile", month="2026-13", database_url=database_url, csv=True, out=None
        )
        assert await reconcile_cli.run_async(bad) == 2


def test_cli_registers_billing_commands() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    billing_cli.register(CommandGroups(sub))
    args = parser.parse_args(
        [
            "billing",
            "statement",
            "--counterparty",
            "AIA",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-31",
            "--csv",
        ]
    )
    assert args.func is billing_cli.run
    assert (args.start, args.end, args.csv) == (date(2026, 1, 1), date(2026, 1, 31), True)
    assert billing_cli.thb(-5) == "-0.05" and billing_cli.thb(123450) == "1234.50"
