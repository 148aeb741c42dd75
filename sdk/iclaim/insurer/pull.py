"""The pull loop (docs/protocol.md §6, DELIVERY_MODE_PULL): long-poll
`PullClaims` through the gateway, store each delivery in the inbox, let the
worker decide it. A delivery not decided within the lease is offered again;
the inbox sees it as a duplicate. The decisions of a stored batch that are
ready in time ride on the next pull (§6.1, `iclaim.insurer.carrier`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

import grpc

from iclaim.errors import IclaimError
from iclaim.insurer.carrier import DecisionCarrier
from iclaim.insurer.host import InsurerHost
from iclaim.insurer.inbox import PutResult
from iclaim.insurer.intake import check_delivery
from iclaim.v1 import insurer_service_pb2 as ipb

log = logging.getLogger("iclaim.insurer")

PULL_BATCH = 10
PULL_WAIT_S = 20.0  # long-poll; the protocol allows up to 30 s
BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 30.0


def _name(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.code().name)
    if isinstance(exc, IclaimError):
        return exc.reason
    return type(exc).__name__


async def _until_stopped(stop: asyncio.Event, delay_s: float) -> None:
    with contextlib.suppress(TimeoutError):  # not wait_for: it can lose a cancel (3.11)
        async with asyncio.timeout(delay_s):
            await stop.wait()


def _checked(insurer_code: str, deliveries: Sequence[ipb.ClaimDelivery]) -> list[ipb.ClaimDelivery]:
    """The deliveries the worker can act on; an invalid one is skipped (it is
    offered again after its lease, and skipped again)."""
    ok = []
    for delivery in deliveries:
        try:
            check_delivery(delivery)
        except IclaimError:
            log.warning("insurer kit: %s pulled an invalid delivery; skipped", insurer_code)
            continue
        ok.append(delivery)
    return ok


async def run_pull(
    host: InsurerHost,
    insurer_code: str,
    stop: asyncio.Event,
    *,
    batch: int = PULL_BATCH,
    wait_s: float = PULL_WAIT_S,
    rand: Callable[[], float] = random.random,
) -> None:
    """Pulls for one insurer served by `host` until `stop` is set; meanwhile
    the worker posts that insurer's decisions through the loop's carrier."""
    carrier = DecisionCarrier(host.client(insurer_code))
    with host.gateway_for_worker(insurer_code, carrier):
        try:
            await _pull_until_stopped(host, insurer_code, carrier, stop, batch, wait_s, rand)
        finally:
            carrier.close()  # what it holds is posted by PostDecision


async def _pull_until_stopped(
    host: InsurerHost,
    insurer_code: str,
    carrier: DecisionCarrier,
    stop: asyncio.Event,
    batch: int,
    wait_s: float,
    rand: Callable[[], float],
) -> None:
    failures = 0
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            pulling = asyncio.ensure_future(carrier.pull(max_claims=batch, wait_s=wait_s))
            await asyncio.wait({pulling, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                pulling.cancel()
                with contextlib.suppress(BaseException):
                    await pulling
                return
            try:
                if batch_ok := _checked(insurer_code, pulling.result()):
                    # One inbox commit (one fsync) for the batch, not one each.
                    taken = await host.take_pulled(insurer_code, batch_ok)
                    # Only new ones go to the worker now; their decisions may ride the next pull.
                    carrier.expect(sum(t.result in (PutResult.NEW, PutResult.REOPENED) for t in taken))
                failures = 0
            except Exception as exc:  # noqa: BLE001 (gateway or inbox unavailable: back off, keep pulling)
                # What was not stored is offered again after its lease.
                failures += 1
                name = _name(exc)
                delay = rand() * min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(failures, 16))
                log.warning("insurer kit: %s pull failed (%s); again in %.1f s", insurer_code, name, delay)
                await _until_stopped(stop, delay)
    finally:
        stopping.cancel()
