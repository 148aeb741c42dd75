"""A served process keeps what start-up made out of the collector's full
collections (gc.freeze once the app has started): under load those
collections walked every module's objects while every call in flight waited."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from iclaim_hub.common.server import ServeConfig, serve


class _App:
    port = 0

    def __init__(self) -> None:
        self.frozen_before_start = -1

    async def start(self) -> None:
        self.frozen_before_start = gc.get_freeze_count()

    async def stop(self, grace: float) -> None:
        pass


async def test_what_start_up_made_is_frozen_once_the_app_has_started() -> None:
    gc.unfreeze()
    app = _App()
    serving = asyncio.create_task(serve(app, ServeConfig(listen_addr="127.0.0.1:0", metrics_port=-1)))
    try:
        for _ in range(100):
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.01)
        assert app.frozen_before_start == 0
        assert gc.get_freeze_count() > 1000  # the modules' objects, at least
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        gc.unfreeze()
