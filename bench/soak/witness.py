"""Keeps the audit log's signed checkpoints as the run goes, outside its
database: at the end the log must still hold every one of them, under the
checkpoint key seen at the start. A history rewritten with its stored
checkpoints (and even its key) during the chaos would not match them."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc

EVERY_S = 10.0


class Witness:
    def __init__(self, audit_addr: str) -> None:
        self._addr = audit_addr
        self.notes: list[str] = []  # distinct signed notes, in the order seen
        self.misses = 0  # reads that failed (audit_log or PostgreSQL down)
        self._task: asyncio.Task[None] | None = None

    async def read_once(self) -> None:
        try:
            async with grpc.aio.insecure_channel(self._addr) as ch:
                got = await audit_log_pb2_grpc.AuditLogServiceStub(ch).GetCheckpoint(
                    audit_log_pb2.GetCheckpointRequest(), timeout=5
                )
        except grpc.aio.AioRpcError:
            self.misses += 1
            return
        note = got.checkpoint.note
        if note and note not in self.notes:
            self.notes.append(note)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.read_once()
            await asyncio.sleep(EVERY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
