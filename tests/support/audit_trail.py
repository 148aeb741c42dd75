"""Reading a running stack's audit log over the internal service."""

from __future__ import annotations

import asyncio

import grpc

from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc
from tests.support.stack import RunningStack


async def entries_for(stack: RunningStack, tid: str, want: int) -> list[audit_log_pb2.LogEntry]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.stack.ports.audit}") as ch:
        stub = audit_log_pb2_grpc.AuditLogServiceStub(ch)
        # Up to 30 s, only for a broken run: after the audit log or the router is
        # killed, the relay's backoff can hold events back for ten seconds and more.
        for _ in range(300):
            resp = await stub.ListEntriesByTransaction(
                audit_log_pb2.ListEntriesByTransactionRequest(transaction_id=tid), timeout=5
            )
            if len(resp.entries) >= want:
                return list(resp.entries)
            await asyncio.sleep(0.1)
    return list(resp.entries)
