"""What every mode shares for a set of insurers served by one process: one
inbox, one worker, one gateway client per insurer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from iclaim.errors import Unavailable
from iclaim.insurer.credentials import InsurerCredentials
from iclaim.insurer.handler import ClaimHandler
from iclaim.insurer.inbox import Inbox, PutResult, StagedPost
from iclaim.insurer.intake import Intake, Taken, store_many
from iclaim.insurer.verify import PushVerifier, keys_of
from iclaim.insurer.worker import InsurerGateway, Worker
from iclaim.v1 import insurer_service_pb2 as ipb

Handlers = Mapping[str, ClaimHandler] | ClaimHandler


def handlers_for(insurers: Sequence[InsurerCredentials], handlers: Handlers) -> dict[str, ClaimHandler]:
    """One handler for all, or one per insurer code (every code needs one)."""
    if isinstance(handlers, Mapping):
        missing = [i.code for i in insurers if i.code not in handlers]
        if missing:
            raise ValueError(f"no handler for {missing}")
        return {i.code: handlers[i.code] for i in insurers}
    return {i.code: handlers for i in insurers}


class InsurerHost:
    def __init__(
        self,
        insurers: Sequence[InsurerCredentials],
        handlers: Handlers,
        state_dir: Path,
        *,
        clients: Mapping[str, InsurerGateway] | None = None,
        inbox_options: Mapping[str, Any] | None = None,
        worker_options: Mapping[str, Any] | None = None,
    ) -> None:
        codes = [i.code for i in insurers]
        if not codes or len(set(codes)) != len(codes):
            raise ValueError("serve at least one insurer, each once")
        self.insurers = {i.code: i for i in insurers}
        self.handlers = handlers_for(insurers, handlers)
        self.state_dir = Path(state_dir)
        self._given_clients = dict(clients) if clients is not None else None
        self._inbox_options = dict(inbox_options or {})
        self._worker_options = dict(worker_options or {})
        # Answering pushes with decisions (§10.6) is the receivers' switch, not the worker's.
        self._answer_in_push = bool(self._worker_options.pop("answer_in_push", False))
        self._owned: list[Any] = []
        self._inbox: Inbox | None = None
        self._worker: Worker | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def inbox(self) -> Inbox:
        if self._inbox is None:
            raise Unavailable("insurer kit is not started", reason="INBOX_UNAVAILABLE")
        return self._inbox

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            raise Unavailable("insurer kit is not started", reason="INBOX_UNAVAILABLE")
        return self._worker

    async def start(self) -> None:
        self._inbox = await Inbox.open(self.state_dir, **self._inbox_options)
        try:
            clients = self._given_clients
            if clients is None:
                from iclaim.client.insurer import InsurerClient

                made: dict[str, InsurerGateway] = {}
                for code, ins in self.insurers.items():
                    client = InsurerClient(ins.client_credentials())
                    self._owned.append(client)  # closed on stop
                    made[code] = client
                clients = made
            self._worker = Worker(self._inbox, self.insurers, self.handlers, clients, **self._worker_options)
        except BaseException:
            await self.stop()  # e.g. an unreadable gateway CA file: close what was opened
            raise
        self._task = asyncio.create_task(self._worker.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        for client in self._owned:
            await client.channel.close()
        if self._inbox is not None:
            await self._inbox.close()

    async def __aenter__(self) -> InsurerHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def client(self, code: str) -> InsurerGateway:
        return self.worker.clients[code]

    @contextlib.contextmanager
    def gateway_for_worker(self, code: str, gateway: InsurerGateway) -> Iterator[None]:
        """The worker reaches the gateway for `code` through `gateway` (the pull
        loop's decision carrier) until the block ends."""
        clients = self.worker.clients
        before = clients[code]
        clients[code] = gateway
        try:
            yield
        finally:
            if clients.get(code) is gateway:
                clients[code] = before

    def intake(self, insurers: Sequence[InsurerCredentials], **verifier_options: Any) -> Intake:
        """A receiver's intake: verifies pushes with the endpoint keys of `insurers`."""
        unknown = [i.code for i in insurers if i.code not in self.insurers]
        if unknown:
            raise ValueError(f"{unknown} are not served by this host")
        missing = [i.code for i in insurers if not i.endpoint_key_id]
        if missing:
            raise ValueError(f"no endpoint key for {missing}: needed to verify pushes")
        verifier = PushVerifier(keys_of(insurers), **verifier_options)
        answer = self._answer if self._answer_in_push else None
        return Intake(verifier, lambda: self.inbox, lambda code, txid: self.worker.submit(code, txid), answer)

    async def _answer(
        self, insurer_code: str, delivery: ipb.ClaimDelivery
    ) -> tuple[PutResult, StagedPost | None]:
        return await self.worker.answer(insurer_code, delivery)

    async def take_pulled(self, insurer_code: str, deliveries: Sequence[ipb.ClaimDelivery]) -> list[Taken]:
        """A pulled batch (each checked by the caller): stored like pushes (no
        push signature to check), in one inbox transaction."""
        return await store_many(self.inbox, self.worker.submit, insurer_code, deliveries)
