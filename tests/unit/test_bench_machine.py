"""What the bench counts, and where: the machine's busy share (from /proc/stat's
first line, read at the start and end of a load, so a reader sees how near the
CPUs were to full), the load generator's own CPU apart from its start-up and
sealing, and the autovacuum stand-in's CPU apart within PostgreSQL's."""

from __future__ import annotations

from typing import Any

import pytest

from bench import infra, load
from bench.__main__ import bench_echo, nearby_unit, table
from bench.cpu import machine_shares, machine_ticks

# cpu user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = "cpu  1000 10 300 5000 40 0 50 20 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
AFTER = "cpu  1700 10 450 5200 60 0 90 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"


def test_ticks_sum_busy_idle_and_steal_from_the_machine_line() -> None:
    assert machine_ticks(BEFORE) == {"busy": 1360, "idle": 5040, "steal": 20}


def test_shares_are_of_every_tick_in_the_window() -> None:
    # busy 890, idle 220, steal 20 of 1130 ticks
    assert machine_shares(machine_ticks(BEFORE), machine_ticks(AFTER)) == {"busy": 0.788, "steal": 0.018}


def test_the_machine_as_it_runs_now_reads_as_shares() -> None:
    first = machine_ticks()
    shares = machine_shares(first, machine_ticks())
    assert 0.0 <= shares["busy"] <= 1.0 and 0.0 <= shares["steal"] <= 1.0


def _phase(machine: dict[str, float] | None) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "claims_per_s": 100.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "cpu": {"sandbox_s": 1.0},
        "per_claim": {
            "hub_cpu_ms": 6.0,
            "postgres_write_transactions": 1.5,
            "rpcs": {"internal_per_claim": 2.0},
        },
    }
    if machine is not None:
        phase["machine"] = machine
    return phase


def test_the_table_shows_the_busy_share_or_a_dash() -> None:
    phases = {"64": _phase({"busy": 0.954, "steal": 0.0}), "1": _phase(None)}
    rows = table({"closed_loop": phases}).splitlines()
    assert rows[0].endswith("busy")
    assert rows[1].endswith(" 95%") and rows[2].endswith(" -")


def test_the_table_shows_the_hub_switches_per_claim_or_a_dash() -> None:
    counted = _phase(None)
    counted["per_claim"]["context_switches"] = {"hub": 41.5, "hub_by_process": {}, "sandbox": 9.0}
    rows = table({"closed_loop": {"64": counted, "1": _phase(None)}}).splitlines()
    column = rows[0].index("switches")
    assert rows[1][column : column + len("switches")].strip() == "41.5"
    assert rows[2][column : column + len("switches")].strip() == "-"


def test_the_table_shows_how_far_the_echo_drifted_around_each_phase() -> None:
    phase = _phase(None)
    phase["echo_nearby"] = nearby_unit(
        {"requests_per_s": 4000.0, "cpu_us_per_request": 400.0},
        {"requests_per_s": 3000.0, "cpu_us_per_request": 600.0},
    )
    rows = table({"closed_loop": {"64": phase}}).splitlines()
    assert "echo µs before→after each phase: closed 64 400→600" in rows
    assert rows[1].split()[7] == "500.0"  # the mean is the phase's unit


async def test_the_echo_unit_leaves_out_the_clients_start_up() -> None:
    """A real echo run, briefly: the client's start-up (Python, gRPC) is
    reported apart and is not in the CPU a request costs."""
    result = await bench_echo(0.5, 4)
    assert result["requests"] > 0
    # Starting Python and importing gRPC costs well over 0.1 s of CPU anywhere.
    assert result["start_up_cpu_s"] >= 0.1
    assert result["cpu_s"] * 1e6 / result["requests"] == pytest.approx(result["cpu_us_per_request"], rel=0.01)


def test_sealing_ahead_of_the_load_is_not_the_loads_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims sealed before the timed part: their CPU is reported apart, and the
    load generator's figure counts only from the first submission on."""
    monkeypatch.setattr(load.time, "process_time", lambda: 9.5)
    spent = load._own_cpu(0.4, 5.2)  # started at 0.4 s of CPU, sealed by 5.2 s
    assert spent == {"load_cpu_s": 4.3, "start_up_cpu_s": 0.4, "sealing_cpu_s": 4.8}


def test_without_sealing_the_load_counts_from_the_start_of_its_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load.time, "process_time", lambda: 3.4)
    assert load._own_cpu(0.4) == {"load_cpu_s": 3.0, "start_up_cpu_s": 0.4}


def test_the_autovacuum_stand_ins_backend_is_shown_apart_within_postgres() -> None:
    """Its CPU leaves the "postgres" line for its own; together they are what
    every backend and server process spent, so the hub's total is unchanged."""
    before = infra.InfraSnapshot(
        postgres={10: 1.0, 11: 2.0, 12: 0.5}, redis={20: 1.0}, next_xid=100, commits=5
    )
    after = infra.InfraSnapshot(
        postgres={10: 1.5, 11: 4.25, 13: 0.75}, redis={20: 1.5}, next_xid=130, commits=9
    )
    split = infra.used(before, after, stand_in_pid=11)
    assert split["postgres"] == 1.25 and split["postgres_autovacuum_stand_in"] == 2.25
    whole = infra.used(before, after)
    assert whole["postgres"] == 3.5 and whole["postgres_autovacuum_stand_in"] == 0.0
    assert split["write_transactions"] == 30 and split["redis"] == 0.5
