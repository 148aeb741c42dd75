"""A phase's echo unit is the mean of the short echo runs on either side of
it, each kept apart so a reader sees how far the machine drifted."""

from __future__ import annotations

from bench.__main__ import nearby_unit


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
