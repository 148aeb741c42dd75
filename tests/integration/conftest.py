"""Integration tests share one running clearinghouse per session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.stack import RunningStack, running_stack_in


@pytest.fixture(scope="session")
async def running_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    async with running_stack_in(tmp_path_factory.mktemp("stack")) as stack:
        yield stack
