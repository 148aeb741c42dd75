"""Participation gauges (hospitals registered vs live, insurers connected),
refreshed in the background: dashboards read them, no request pays for them."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from iclaim_hub.registry.model import HEALTH_HEALTHY, Principal
from services.claim_router import metrics
from services.claim_router.usecases import ClaimRouter

log = structlog.get_logger("claim_router.participation")

LIVE_WINDOW = timedelta(days=30)
REFRESH_S = 60.0
PAGE = 500


class Participants(Protocol):
    async def principals(self, role: str | None = None) -> list[Principal]: ...


class SubmissionLog(Protocol):
    async def hospitals_submitting_since(self, since: datetime) -> int: ...


async def refresh(router: ClaimRouter, registry: Participants, claims: SubmissionLog) -> None:
    hospitals = await registry.principals("hospital")
    live = await claims.hospitals_submitting_since(datetime.now(UTC) - LIVE_WINDOW)
    connected, token = 0, ""
    while True:
        page = await router.list_insurers(PAGE, token)
        connected += sum(1 for party in page.items if party.health == HEALTH_HEALTHY)
        token = page.next_page_token
        if not token:
            break
    metrics.HOSPITALS_REGISTERED.set(len(hospitals))
    metrics.HOSPITALS_LIVE.set(live)
    metrics.INSURERS_CONNECTED.set(connected)


class ParticipationGauges:
    def __init__(self, router: ClaimRouter, registry: Participants, claims: SubmissionLog) -> None:
        self._args = (router, registry, claims)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await refresh(*self._args)
            except Exception as exc:  # a database outage: try again next time
                log.warning("participation_refresh_failed", error=type(exc).__name__)
            await asyncio.sleep(REFRESH_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
