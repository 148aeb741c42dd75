"""Housekeeping's pacing and its limits: batches until one comes back short,
and the kept windows are bounded and checked at start-up (the adapter's must
outlive a delivery, or a late hand-off would be pushed twice)."""

from __future__ import annotations

import pytest

from iclaim_hub.common.config import ConfigError
from iclaim_hub.common.purge import MAX_EVERY_S, remove_in_batches
from iclaim_hub.crypto.secretbox import SecretBox
from services.claim_router.server import MAX_OUTBOX_KEEP_S
from services.claim_router.server import Config as RouterConfig
from services.insurer_adapter.server import DEFAULT_DELIVERIES_KEEP_S, MAX_DELIVERIES_KEEP_S
from services.insurer_adapter.server import Config as AdapterConfig


async def test_batches_run_until_one_comes_back_short() -> None:
    backlog = [5, 5, 5, 2]
    limits: list[int] = []

    async def delete(limit: int) -> int:
        limits.append(limit)
        return backlog.pop(0)

    assert await remove_in_batches(delete, 5) == 17
    assert limits == [5, 5, 5, 5]


async def test_an_exactly_full_last_batch_costs_one_empty_statement() -> None:
    backlog = [3, 0]

    async def delete(limit: int) -> int:
        return backlog.pop(0)

    assert await remove_in_batches(delete, 3) == 3
    assert backlog == []


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("ICLAIM_DATABASE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("ICLAIM_MASTER_KEY", SecretBox.new_master_key())
    monkeypatch.setenv("ICLAIM_ADMIN_TOKEN", "t" * 32)
    return monkeypatch


def test_defaults(env: pytest.MonkeyPatch) -> None:
    router, adapter = RouterConfig.from_env(), AdapterConfig.from_env()
    assert (router.outbox_keep_s, router.purge_every_s) == (86_400.0, 600.0)
    assert (adapter.deliveries_keep_s, adapter.purge_every_s) == (DEFAULT_DELIVERIES_KEEP_S, 600.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ICLAIM_OUTBOX_KEEP_S", "59"),
        ("ICLAIM_OUTBOX_KEEP_S", str(MAX_OUTBOX_KEEP_S + 1)),
        ("ICLAIM_OUTBOX_KEEP_S", "a day"),
        ("ICLAIM_PURGE_EVERY_S", "0.5"),
        ("ICLAIM_PURGE_EVERY_S", str(MAX_EVERY_S + 1)),
    ],
)
def test_router_limits_are_refused_at_start_up(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        RouterConfig.from_env()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ICLAIM_DELIVERIES_KEEP_S", "59"),
        ("ICLAIM_DELIVERIES_KEEP_S", str(MAX_DELIVERIES_KEEP_S + 1)),
        # A delivery lives a day by default: a shorter window could forget one
        # the router may still hand off again.
        ("ICLAIM_DELIVERIES_KEEP_S", "86400"),
        ("ICLAIM_PURGE_EVERY_S", "0"),
    ],
)
def test_adapter_limits_are_refused_at_start_up(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        AdapterConfig.from_env()


def test_the_adapter_window_follows_the_delivery_expiry(env: pytest.MonkeyPatch) -> None:
    env.setenv("ICLAIM_DELIVERY_EXPIRY_S", "3600")
    env.setenv("ICLAIM_DELIVERIES_KEEP_S", "3601")
    assert AdapterConfig.from_env().deliveries_keep_s == 3601.0
