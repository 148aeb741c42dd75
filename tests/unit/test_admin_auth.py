"""The admin token's configuration rules (checked before the adapter binds)."""

from __future__ import annotations

import hashlib

import pytest

from iclaim_hub.common.config import ConfigError
from services.insurer_adapter.admin import BearerAuth, admin_token_digest


def test_the_digest_is_sha256_of_the_token() -> None:
    token = "a" * 32
    assert admin_token_digest(token) == hashlib.sha256(token.encode()).digest()


@pytest.mark.parametrize(
    "token", ["", "a" * 31, "a" * 513, "a" * 31 + " ", "a" * 32 + "\n", "a" * 31 + "\u0e01"]
)
def test_short_long_or_invisible_tokens_fail_at_start_up(token: str) -> None:
    with pytest.raises(ConfigError):
        admin_token_digest(token)


def test_the_servicer_takes_a_digest_not_a_token() -> None:
    with pytest.raises(ValueError):
        BearerAuth(b"a" * 40)
