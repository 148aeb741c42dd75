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


def router_changes(entries: list[audit_log_pb2.LogEntry]) -> list[str]:
    """The claim states the router logged, in log order."""
    return [e.event.outcome_reason for e in entries if e.event.service_type == "claim_router"]


async def entries_once_decided(stack: RunningStack, tid: str) -> list[audit_log_pb2.LogEntry]:
    """`tid`'s entries once the router's APPROVED is among them (up to 30 s: the
    gateway's own entries for each GetClaim can outnumber `want` before the
    relay, in backoff after a kill, has sent the decision)."""
    for _ in range(300):
        entries = await entries_for(stack, tid, want=3)
        if "CLAIM_STATE_APPROVED" in router_changes(entries):
            break
        await asyncio.sleep(0.1)
    return entries
