"""The paced echo runs against the real bare echo server: every call sent at the
asked rate is answered and its CPU (server and client) is counted."""

from __future__ import annotations

from bench.__main__ import bench_echo


async def test_paced_echo_sends_what_the_rate_asks_and_costs_cpu() -> None:
    result = await bench_echo(1.0, 0, paced_per_s=50.0)
    assert result["requests"] == 50
    assert result["target_per_s"] == 50.0
    assert result["cpu_s"] > 0
    assert result["cpu_us_per_request"] == round(result["cpu_s"] * 1e6 / 50, 1)
