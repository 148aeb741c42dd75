"""The router's DeliveryReportService as the Reporter's ReportSink (one call
with a deadline per report; anything but OK is retried later) and as the
TakenMarks' sink (a window's taken pushes in ReportTakenBatch calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from iclaim_hub.common.proto_time import timestamp
from iclaim_hub.internal.v1 import delivery_report_pb2, delivery_report_pb2_grpc
from services.insurer_adapter.model import PendingReport, ReportKind

# What one ReportTakenBatch may carry (delivery_report.proto).
MAX_PER_BATCH = 500


class RouterReports:
    def __init__(self, channel: grpc.aio.Channel, deadline_s: float) -> None:
        self._stub = delivery_report_pb2_grpc.DeliveryReportServiceStub(channel)
        self._deadline_s = deadline_s

    async def report(self, r: PendingReport) -> str | None:
        try:
            if r.kind is ReportKind.TAKEN:
                await self._stub.ReportTaken(_taken_request(r), timeout=self._deadline_s)
            elif r.kind is ReportKind.EXPIRED:
                await self._stub.ReportExpired(
                    delivery_report_pb2.ReportExpiredRequest(
                        transaction_id=r.transaction_id, insurer_code=r.insurer_code
                    ),
                    timeout=self._deadline_s,
                )
            else:
                await self._stub.ReportRedriven(
                    delivery_report_pb2.ReportRedrivenRequest(
                        transaction_id=r.transaction_id, insurer_code=r.insurer_code
                    ),
                    timeout=self._deadline_s,
                )
        except grpc.aio.AioRpcError as err:
            return err.code().name
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a channel failure is retried like UNAVAILABLE
            return f"UNAVAILABLE:{type(exc).__name__}"
        return None

    async def report_taken_many(self, reports: Sequence[PendingReport]) -> set[str]:
        """The transaction ids the router acknowledged; the rest go through
        the outbox. Falls back to one call each against a router that does not
        know ReportTakenBatch yet (a rolling upgrade)."""
        acked: set[str] = set()
        for start in range(0, len(reports), MAX_PER_BATCH):
            chunk = reports[start : start + MAX_PER_BATCH]
            request = delivery_report_pb2.ReportTakenBatchRequest(reports=[_taken_request(r) for r in chunk])
            try:
                answer = await self._stub.ReportTakenBatch(request, timeout=self._deadline_s)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    problems = await asyncio.gather(*(self.report(r) for r in chunk))
                    acked.update(r.transaction_id for r, p in zip(chunk, problems, strict=True) if p is None)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a channel failure: the outbox sends them
                continue
            refused = {r.index for r in answer.refused}
            acked.update(r.transaction_id for i, r in enumerate(chunk) if i not in refused)
        return acked


def _taken_request(r: PendingReport) -> delivery_report_pb2.ReportTakenRequest:
    taken = delivery_report_pb2.ReportTakenRequest(
        transaction_id=r.transaction_id, insurer_code=r.insurer_code
    )
    if r.taken_at is not None:
        taken.taken_at.CopyFrom(timestamp(r.taken_at))
    return taken
