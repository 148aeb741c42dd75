"""Billing throughput: PostPayment calls with 100 lines each through an
in-process billing server (gRPC, real PostgreSQL), several clients at once.

    from bench.billing_bench import run_billing_bench
    run_billing_bench("postgresql://postgres@127.0.0.1:5432/somedb")

Uses the `billing` schema of that database (migrating it if needed) and claim
ids unique to the run, so it can share a database with other data.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from iclaim_hub.common.db import create_pool
from iclaim_hub.common.server import ServeConfig
from iclaim_hub.internal.v1 import decision_intake_pb2, decision_intake_pb2_grpc
from iclaim.v1 import billing_service_pb2 as pb
from iclaim.v1 import billing_service_pb2_grpc
from services.billing.domain import Decision
from services.billing.server import Config, build_server

LINES = 100
INSURER = "BENCHINS"


class _Settlement(decision_intake_pb2_grpc.ClaimSettlementServiceServicer):
    """Acknowledges MarkClaimPaid, as the claim router would."""

    async def MarkClaimPaid(self, request: Any, context: Any) -> Any:
        return decision_intake_pb2.MarkClaimPaidResponse()

    async def GetClaimDecisions(self, request: Any, context: Any) -> Any:
        # Not asked for during a payment run; the generated servicer's answer.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by the bench")


async def run_billing_bench_async(
    database_url: str, *, payments: int = 200, clients: int = 8, hospitals: int = 8
) -> dict[str, Any]:
    peer = grpc.aio.server()
    decision_intake_pb2_grpc.add_ClaimSettlementServiceServicer_to_server(_Settlement(), peer)
    peer_port = peer.add_insecure_port("127.0.0.1:0")
    await peer.start()
    pool = await create_pool(database_url, max_size=2)  # only for the settled count
    cfg = Config(
        serve=ServeConfig("127.0.0.1:0", -1),
        database_url=database_url,
        router_target=f"127.0.0.1:{peer_port}",
        outbox_poll_s=0.5,
    )
    billing = await build_server(cfg)
    await billing.start()
    run_id = uuid.uuid4().hex[:8]
    hcodes = [f"9{i:04d}" for i in range(hospitals)]
    try:
        # Approvals straight into the store (not what is measured).
        now = datetime.now(UTC)
        claims = [
            (f"bench-{run_id}-{p}-{i}", hcodes[p % hospitals]) for p in range(payments) for i in range(LINES)
        ]
        sem = asyncio.Semaphore(clients + 2)

        async def approve(tx: str, hospital: str) -> None:
            async with sem:
                await billing.usecases.record_decision(
                    Decision(tx, hospital, INSURER, "APPROVED", 10_000, now)
                )

        await asyncio.gather(*(approve(tx, h) for tx, h in claims))

        paid_at = timestamp_pb2.Timestamp()
        paid_at.FromDatetime(now)
        requests = [
            pb.PostPaymentRequest(
                trace_no=f"B{run_id}-{p}",
                paid_at=paid_at,
                total_satang=LINES * 9_000,
                lines=[
                    pb.PaymentLine(
                        transaction_id=f"bench-{run_id}-{p}-{i}",
                        paid_satang=9_000,
                        adjustments=[pb.Adjustment(group="CO", reason_code="45", amount_satang=1_000)],
                    )
                    for i in range(LINES)
                ],
            )
            for p in range(payments)
        ]
        queue: asyncio.Queue[pb.PostPaymentRequest] = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        latencies: list[float] = []
        md = (("x-iclaim-principal", INSURER), ("x-iclaim-role", "insurer"))

        async def client() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{billing.port}") as ch:
                stub = billing_service_pb2_grpc.BillingServiceStub(ch)
                while not queue.empty():
                    req = queue.get_nowait()
                    t0 = time.perf_counter()
                    await stub.PostPayment(req, metadata=md, timeout=60)
                    latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        settled = await pool.fetchval(
            "SELECT count(*) FROM billing.claims WHERE transaction_id LIKE $1"
            " AND settled_satang = approved_satang",
            f"bench-{run_id}-%",
        )
        latencies.sort()
        return {
            "payments": payments,
            "lines_per_payment": LINES,
            "clients": clients,
            "hospitals": hospitals,
            "seconds": round(elapsed, 3),
            "payments_per_s": round(payments / elapsed, 1),
            "lines_per_s": round(payments * LINES / elapsed, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
            "claims_settled": int(settled),
        }
    finally:
        await billing.stop(0)
        await pool.close()
        await peer.stop(0)


def run_billing_bench(database_url: str, **kwargs: Any) -> Any:
    """Returns the result dict; called from inside a running event loop (as
    bench/__main__.py does) it returns the coroutine for the caller to await."""
    coro = run_billing_bench_async(database_url, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    return coro


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ["ICLAIM_DATABASE_URL"]
    print(run_billing_bench(url))
