"""Context switches per claim (bench/cpu.py, bench/__main__.py): read from
every live thread's /proc status, summed over a process tree, and counted per
claim for the hub apart from the sandbox (the table's column:
test_bench_machine.py)."""

from __future__ import annotations

import os
import threading
import time
from bench.__main__ import switches_per_claim
from bench.cpu import status_switches, switches, switches_snapshot
from iclaim_ops.devstack.stack import SANDBOX

STATUS = """Name:\tpython3
State:\tS (sleeping)
Threads:\t3
voluntary_ctxt_switches:\t1200
nonvoluntary_ctxt_switches:\t34
"""


def test_voluntary_and_involuntary_switches_are_added() -> None:
    assert status_switches(STATUS) == 1234
    assert status_switches("Name:\tx\n") == 0


def test_a_thread_that_sleeps_and_wakes_is_counted() -> None:
    before = switches(os.getpid())

    def nap() -> None:
        for _ in range(50):
            time.sleep(0.001)  # each sleep ends in a wakeup: a voluntary switch

    worker = threading.Thread(target=nap)
    worker.start()
    # Read while the thread still lives: an exited thread takes its count with it.
    time.sleep(0.03)
    during = switches(os.getpid())
    worker.join()
    assert during - before >= 10


def test_a_process_gone_counts_nothing() -> None:
    assert switches(2**22 + 12345) == 0  # above the kernel's pid limit
    assert switches_snapshot({"gone": 2**22 + 12345}) == {"gone": 0}


def test_per_claim_the_hub_is_summed_and_the_sandbox_kept_apart() -> None:
    before = {"envoy": 100, "claim_router": 1000, SANDBOX.name: 50}
    after = {"envoy": 300, "claim_router": 1600, SANDBOX.name: 450}
    got = switches_per_claim(before, after, 100)
    assert got == {"hub": 8.0, "hub_by_process": {"envoy": 2.0, "claim_router": 6.0}, "sandbox": 4.0}
