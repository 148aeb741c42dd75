"""A phase's echo unit is the mean of the short echo runs on either side of
it, each kept apart so a reader sees how far the machine drifted."""

from __future__ import annotations

from bench.__main__ import nearby_unit, table


def test_the_unit_is_the_mean_of_the_runs_before_and_after() -> None:
    unit = nearby_unit(
        {"requests_per_s": 4000.0, "cpu_us_per_request": 400.0},
        {"requests_per_s": 3000.0, "cpu_us_per_request": 600.0},
    )
    assert unit == {
        "requests_per_s": 3500.0,
        "cpu_us_per_request": 500.0,
        "before_us": 400.0,
        "after_us": 600.0,
    }


def test_a_run_that_measured_nothing_cannot_make_the_unit_zero() -> None:
    unit = nearby_unit(
        {"requests_per_s": 0.0, "cpu_us_per_request": 0.0}, {"requests_per_s": 0.0, "cpu_us_per_request": 0.0}
    )
    assert unit["cpu_us_per_request"] == 0.1


def test_the_table_shows_how_far_the_echo_drifted_around_each_phase() -> None:
    phase = {
        "claims_per_s": 100.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "cpu": {"sandbox_s": 1.0},
        "per_claim": {
            "hub_cpu_ms": 6.0,
            "postgres_write_transactions": 1.5,
            "rpcs": {"internal_per_claim": 2.0},
        },
        "echo_nearby": nearby_unit(
            {"requests_per_s": 4000.0, "cpu_us_per_request": 400.0},
            {"requests_per_s": 3000.0, "cpu_us_per_request": 600.0},
        ),
    }
    rows = table({"closed_loop": {"64": phase}}).splitlines()
    assert "echo µs before→after each phase: closed 64 400→600" in rows
    assert rows[1].split()[7] == "500.0"  # the mean is the phase's unit
