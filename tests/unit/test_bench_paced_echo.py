"""The paced echo's rate: the busiest hub gRPC server's calls a second in the
fastest closed-loop phase, unless BENCH_ECHO_PACED_RATE names one."""

from __future__ import annotations

from typing import Any

from bench.__main__ import paced_echo_rate, table


def _phase(claims_per_s: float, by_process: dict[str, float]) -> dict[str, Any]:
    return {"claims_per_s": claims_per_s, "per_claim": {"rpcs": {"by_process_per_claim": by_process}}}


def test_the_busiest_server_of_the_fastest_phase() -> None:
    phases = {
        "1": _phase(60.0, {"authz": 1.7, "claim_router": 2.4}),
        "64": _phase(200.0, {"authz": 1.42, "claim_router": 1.62, "insurer_adapter": 0.7}),
        "8": _phase(150.0, {"authz": 1.5, "claim_router": 1.9}),
    }
    assert paced_echo_rate(phases, "") == 324.0  # 1.62 x 200


def test_an_explicit_rate_wins_and_no_phase_means_no_run() -> None:
    assert paced_echo_rate({"64": _phase(200.0, {"authz": 1.0})}, "120") == 120.0
    assert paced_echo_rate({}, "") == 0.0


def test_the_table_names_the_paced_echo() -> None:
    phase = _phase(200.0, {"authz": 1.0})
    phase.update(p50_ms=1.0, p99_ms=2.0, cpu={"sandbox_s": 1.0})
    phase["per_claim"].update(
        hub_cpu_ms=6.0,
        postgres_write_transactions=1.5,
        echo_equivalents_vs_paced_echo=9.7,
    )
    phase["per_claim"]["rpcs"]["internal_per_claim"] = 2.0
    claims = {
        "closed_loop": {"64": phase},
        "echo_paced": {"target_per_s": 200.0, "cpu_us_per_request": 620.0},
    }
    last = table(claims).splitlines()[-1]
    assert "echo paced at 200.0/s" in last and "620.0 µs" in last and "= 9.7 of those" in last
