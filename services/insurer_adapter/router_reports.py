"""The router's DeliveryReportService as the Reporter's ReportSink: one call
with a deadline per report; anything but OK is retried later."""

from __future__ import annotations

import asyncio

import grpc

from iclaim_hub.common.proto_time import timestamp
from iclaim_hub.internal.v1 import delivery_report_pb2, delivery_report_pb2_grpc
from services.insurer_adapter.model import PendingReport, ReportKind


class RouterReports:
    def __init__(self, channel: grpc.aio.Channel, deadline_s: float) -> None:
        self._stub = delivery_report_pb2_grpc.DeliveryReportServiceStub(channel)
        self._deadline_s = deadline_s

    async def report(self, r: PendingReport) -> str | None:
        try:
            if r.kind is ReportKind.TAKEN:
                taken = delivery_report_pb2.ReportTakenRequest(
                    transaction_id=r.transaction_id, insurer_code=r.insurer_code
                )
                if r.taken_at is not None:
                    taken.taken_at.CopyFrom(timestamp(r.taken_at))
                await self._stub.ReportTaken(taken, timeout=self._deadline_s)
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
