"""Services run on uvloop unless ICLAIM_EVENT_LOOP=asyncio; anything else is a
configuration error before the service starts."""

from __future__ import annotations

import asyncio

import pytest

from iclaim_hub.common import event_loop
from iclaim_hub.common.config import ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ICLAIM_EVENT_LOOP", raising=False)
    assert event_loop.run(_loop_module()).startswith("uvloop")


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICLAIM_EVENT_LOOP", "asyncio")
    assert event_loop.run(_loop_module()).startswith("asyncio")


def test_an_unknown_loop_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICLAIM_EVENT_LOOP", "trio")
    with pytest.raises(ConfigError, match="ICLAIM_EVENT_LOOP"):
        event_loop.chosen_loop()
