"""The router's outbox, trimmed: an event relayed to the audit log or billing
has done its job there (both keep their own record), so once it is older than
the kept window it goes. One not yet acknowledged stays, however old."""

from __future__ import annotations

from functools import partial
from typing import Protocol

from iclaim_hub.common.purge import remove_in_batches


class PurgeableOutbox(Protocol):
    async def outbox_purge_edge(self, keep_s: float) -> int: ...

    async def purge_sent_outbox(self, below_id: int, limit: int) -> int: ...


async def purge_outbox(store: PurgeableOutbox, keep_s: float) -> int:
    """One pass: the window's edge found once, then batches below it."""
    below = await store.outbox_purge_edge(keep_s)
    return await remove_in_batches(partial(store.purge_sent_outbox, below))
