"""Retention: entry data older than the period expires (leaf hashes stay, so
checkpoints and proofs still verify); entries under a legal hold stay."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Protocol

import structlog

from iclaim_hub.common.purge import remove_in_batches
from services.audit_log import metrics

log = structlog.get_logger("audit_log.retention")

BATCH = 10_000  # entries per transaction: bounded lock time and WAL per commit


class ExpiryStore(Protocol):
    async def expire(self, retention_days: int, limit: int) -> int:
        """Expires at most `limit` entries; returns how many."""


class Retention:
    def __init__(self, store: ExpiryStore, days: int) -> None:
        self._store = store
        self.days = days

    async def expire_all(self) -> int:
        total = await remove_in_batches(partial(self._store.expire, self.days), BATCH)
        metrics.ENTRIES_EXPIRED.inc(total)
        return total

    async def run(self, interval_s: float, *, at_start: bool = True) -> None:
        if not at_start:
            await asyncio.sleep(interval_s)
        while True:
            try:
                n = await self.expire_all()
                if n:
                    log.info("entries_expired", count=n, retention_days=self.days)
            except Exception:  # try again next round; the log itself is unaffected
                log.exception("retention_failed")
            await asyncio.sleep(interval_s)
