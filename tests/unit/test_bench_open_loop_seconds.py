"""The open loop's latencies, second by second of sending: a stall and a
steady queue give the same p99, and the table line tells them apart."""

from __future__ import annotations

from bench.__main__ import open_loop_seconds
from bench.load import by_second


def test_each_second_of_sending_summarised_apart() -> None:
    steady = [(s + i / 10, 0.020) for s in (0, 1, 3) for i in range(10)]
    stall = [(2 + i / 10, 0.100 + i * 0.05) for i in range(10)]
    seconds = by_second(steady + stall)
    assert [s["second"] for s in seconds] == [0, 1, 2, 3]
    assert [s["claims"] for s in seconds] == [10, 10, 10, 10]
    assert seconds[0] == {"second": 0, "claims": 10, "p50_ms": 20.0, "p99_ms": 20.0, "max_ms": 20.0}
    assert seconds[2]["p50_ms"] == 350.0 and seconds[2]["max_ms"] == 550.0


def test_the_line_counts_seconds_over_the_target_and_names_the_worst() -> None:
    seconds = by_second([(0.5, 0.040), (1.5, 0.160), (2.5, 0.900), (3.5, 0.149)])
    line = open_loop_seconds(seconds)
    assert "2 of 4 seconds with p99 over 150 ms" in line
    assert "worst second 2: p99 900.0 ms" in line
