"""What every pusher shares: the hub's TLS client identity, the ClaimDelivery
sent, and one client object (channel, HTTP session) per insurer, rebuilt when
its registered endpoint, CA or mTLS flag changes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from iclaim.v1 import insurer_service_pb2
from iclaim_hub.common.proto_time import timestamp
from services.insurer_adapter.domain import PushError
from services.insurer_adapter.model import Delivery, Endpoint, PushResult


@dataclass(frozen=True)
class ClientIdentity:
    """The certificate the hub presents to insurers that ask for mTLS
    (ICLAIM_DELIVERY_CLIENT_CERT / ICLAIM_DELIVERY_CLIENT_KEY)."""

    cert_path: Path
    key_path: Path
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> ClientIdentity:
        return cls(cert_path, key_path, cert_path.read_bytes(), key_path.read_bytes())


class Pusher(Protocol):
    async def push(self, endpoint: Endpoint, delivery: Delivery) -> PushResult: ...

    async def close(self) -> None: ...


def claim_delivery(d: Delivery) -> insurer_service_pb2.ClaimDelivery:
    """The same ClaimDelivery PullClaims returns (§6), so pushed and pulled
    claims look alike to the insurer."""
    message = insurer_service_pb2.ClaimDelivery(
        transaction_id=d.transaction_id,
        hospital_code=d.hospital_code,
        claim_ref=d.claim_ref,
        billed_amount_satang=d.billed_amount_satang,
        envelope=d.envelope,
    )
    if d.submitted_at is not None:
        message.submitted_at.CopyFrom(timestamp(d.submitted_at))
    return message


def unconfigured_identity(endpoint: Endpoint, identity: ClientIdentity | None) -> PushResult | None:
    if endpoint.mtls and identity is None:
        return PushResult(False, PushError.CLIENT_CERT_UNCONFIGURED.value)
    return None


T = TypeVar("T")


class ClientPool(Generic[T]):
    """One client per insurer, keyed by what it was built from; a replaced
    client is closed after `grace_s` so pushes in flight on it can finish."""

    def __init__(self, close: Callable[[T], Awaitable[None]], grace_s: float) -> None:
        self._close = close
        self._grace_s = grace_s
        self._clients: dict[str, tuple[Hashable, T]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, insurer_code: str, shape: Hashable, build: Callable[[], T]) -> T:
        current = self._clients.get(insurer_code)
        if current is not None and current[0] == shape:
            return current[1]
        client = build()
        self._clients[insurer_code] = (shape, client)
        if current is not None:
            self._retire(current[1])
        return client

    def discard(self, insurer_code: str, client: T) -> None:
        """The next push builds a new client (if `client` is still the current one)."""
        current = self._clients.get(insurer_code)
        if current is not None and current[1] is client:
            del self._clients[insurer_code]
            self._retire(client)

    def _retire(self, client: T) -> None:
        task = asyncio.create_task(self._close_later(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_later(self, client: T) -> None:
        await asyncio.sleep(self._grace_s)
        await self._close(client)

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        clients = [c for _, c in self._clients.values()]
        self._clients.clear()
        for client in clients:
            await self._close(client)


class ByMode:
    """The pusher of each push mode."""

    def __init__(self, pushers: dict[str, Pusher]) -> None:
        self._pushers = pushers

    async def push(self, endpoint: Endpoint, delivery: Delivery) -> PushResult:
        pusher = self._pushers.get(endpoint.mode)
        if pusher is None:
            return PushResult(False, PushError.ENDPOINT_INVALID.value)
        return await pusher.push(endpoint, delivery)

    async def close(self) -> None:
        for pusher in self._pushers.values():
            await pusher.close()
