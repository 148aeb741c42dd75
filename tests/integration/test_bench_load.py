"""The bench's claims load against the running clearinghouse: what it reports of
its own CPU keeps sealing (before the timed part) apart from the load."""

from __future__ import annotations

import uuid

import pytest

from bench.load import claims_load
from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration


async def test_sealing_is_reported_apart_from_the_loads_cpu(running_stack: RunningStack) -> None:
    result = await claims_load(running_stack.credentials_path, 20, 2, uuid.uuid4().hex[:8])
    assert result["claims"] == 20
    # Twenty claims' FHIR and JWE take milliseconds of CPU, never none.
    assert result["sealing_cpu_s"] > 0 and result["load_cpu_s"] > 0
    assert result["start_up_cpu_s"] >= 0
    assert 0.0 <= result["machine"]["busy"] <= 1.0
