"""`python -m bench.transport` against its real servers: every paced call over
each transport is answered, and both sides' CPU is counted."""

from __future__ import annotations

import json

import pytest

from bench.transport import TRANSPORTS, main, measure


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_transport_answers_every_paced_call_and_costs_cpu(transport: str) -> None:
    result = measure(transport, 200.0, 1.0)
    assert (result["transport"], result["calls"], result["answered"]) == (transport, 200, 200)
    assert result["server_us_per_call"] > 0
    assert result["client_us_per_call"] > 0


def test_a_round_prints_one_line_per_transport(capsys: pytest.CaptureFixture[str]) -> None:
    main(["100", "0.5", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["transport"] for line in lines] == list(TRANSPORTS)
