"""The soak's report (bench/soak/report.py): a clean run passes with every check
ok and the issue's summary line; each kind of fault fails the run with its own
FAIL line, and nothing else fails. Shown on a synthetic run of two claims, so a
check computed but never wired into the verdict is caught here. Also the chaos
schedule (bench/soak/chaos.py): who is killed, and how often."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from bench.soak import report
from bench.soak.chaos import CLAIM_PATH, FLUSH, HUB, INSURERS, PG, Tally, hub_of, schedule
from bench.soak.checks import Ledger, RouterClaim, StateChange
from bench.soak.config import SoakConfig
from bench.soak.evidence import Evidence
from bench.soak.his import Planned, View
from iclaim.audit.verifier import Finding, VerifyReport
from iclaim.v1 import claim_service_pb2 as pb

T1, T2 = "txn_" + "1" * 28, "txn_" + "2" * 28
A, B = ("10670", "SOAK-r-0"), ("10670", "SOAK-r-1")


def _changes(tid: str, *states: str, start: int) -> list[StateChange]:
    return [StateChange(tid, s, f"ev-{tid}-{i}", start + i) for i, s in enumerate(states)]


def _view(n: int, policy: str, tid: str, state: int) -> View:
    planned = Planned(n, "10670", "AIA", f"SOAK-r-{n}", policy, 500, "wait")
    return View(planned, {tid}, pb.Claim(transaction_id=tid, state=state))


def clean() -> dict[str, Any]:
    """The parts of a run in which nothing went wrong: T1 approved, T2 denied."""
    views = {
        A: _view(0, "POL-0", T1, pb.CLAIM_STATE_APPROVED),
        B: _view(1, "DENY-1", T2, pb.CLAIM_STATE_DENIED),
    }
    changes = _changes(T1, "RECEIVED", "APPROVED", start=0) + _changes(T2, "RECEIVED", "DENIED", start=10)
    return {
        "cfg": SoakConfig(claims=2, kills=2, flushes=1, pg_restarts=1, insurer_kills=1, seed=7),
        "his": SimpleNamespace(
            acknowledged=lambda: views, acked=2, resubmits=0, notes=Counter(), given_up=[], errors=Counter()
        ),
        "billing": SimpleNamespace(invoices=0, payments=0, paid_claims=0, paid={}, errors=Counter()),
        "reposter": SimpleNamespace(reposted=1, errors=Counter()),
        "replayer": SimpleNamespace(
            sent=4,
            refused=4,
            accepted=[],
            unanswered_left=0,
            captured=Counter({"SubmitClaim": 2}),
            outcomes=Counter(
                {"refused UNAUTHENTICATED NONCE_REPLAYED": 3, "refused UNAUTHENTICATED STALE": 1}
            ),
        ),  # fmt: skip
        "tally": Tally(
            kills=Counter({"claim_router": 1, "envoy": 1}), flushes=1, pg_restarts=1, insurer_kills=1
        ),
        "claims": {
            A: RouterClaim(T1, "10670", A[1], "APPROVED", "", 500),
            B: RouterClaim(T2, "10670", B[1], "DENIED", "", 0),
        },
        "router_changes": changes,
        "audit_changes": list(changes),
        "billing_events": {T1: 1},
        "ledger": Ledger(0, 0, 0, approvals={T1: 1}, intake={T1: ("APPROVED", 500)}),
        "taken_with_envelope": [],
        "nonce_store_losses": 1,
        "audit": VerifyReport(entries=12, checkpoints=3, latest_checkpoint_size=12),
        "attempts": Counter({"SubmitClaim OK": 2, "SubmitClaim UNAVAILABLE": 1}),
        "crashes": Counter(),
        "unsettled": [],
        "replays_through": [],
        "replay_log": (2, 2, True),
        "witnessed": 2,
    }


def build(parts: dict[str, Any]) -> report.Run:
    found = Evidence(
        parts["claims"], parts["router_changes"], parts["billing_events"], parts["audit_changes"],
        parts["ledger"], parts["taken_with_envelope"], parts["nonce_store_losses"],
    )  # fmt: skip
    return report.Run(
        cfg=parts["cfg"], seconds={"load": 10.0, "settle": 2.0, "total": 15.0}, his=parts["his"],
        billing=parts["billing"], reposter=parts["reposter"], replayer=parts["replayer"],
        tally=parts["tally"], attempts=parts["attempts"], found=found, audit=parts["audit"],
        crashes=parts["crashes"], unsettled=parts["unsettled"], replays_through=parts["replays_through"],
        replay_log=parts["replay_log"], witnessed=parts["witnessed"],
    )  # fmt: skip


def fails(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def test_a_clean_run_passes_and_ends_with_the_summary_line() -> None:
    ok, lines = report.report(build(clean()))
    assert ok and fails(lines) == []
    assert lines[-1] == (
        "soak: 2 claims, 2 kills, 1 Redis flushes, 1 PostgreSQL restarts; lost 0, decided twice 0,"
        " replays accepted 0, audit verified, trial balance 0"
    )


def _drop_claim(p: dict[str, Any]) -> None:
    p["claims"] = {A: p["claims"][A]}
    p["router_changes"] = p["audit_changes"] = [c for c in p["router_changes"] if c.transaction_id == T1]


def _tell_otherwise(p: dict[str, Any]) -> None:
    claim = p["his"].acknowledged()[A].claim
    claim.state = pb.CLAIM_STATE_DENIED  # the hospital was told DENIED; the router approved


def _decide_twice(p: dict[str, Any]) -> None:
    p["billing_events"] = {T1: 2}


def _lose_an_audit_entry(p: dict[str, Any]) -> None:
    p["audit_changes"] = p["audit_changes"][:-1]


def _unbalance(p: dict[str, Any]) -> None:
    p["ledger"] = dataclasses.replace(p["ledger"], lines_sum=100, cached_sum=100)


def _short_kills(p: dict[str, Any]) -> None:
    p["tally"].kills = Counter({"envoy": 1})


AUDIT_FAIL = (
    "FAIL audit log verifies against its signed checkpoints and the {} kept outside it during the run,"
    " under the key seen at the start"
)
# (what goes wrong, the FAIL lines it must cause, the summary line's words)
FAULTS: list[tuple[Callable[[dict[str, Any]], None], list[str], str]] = [
    (_drop_claim, ["FAIL lost: 1"], "lost 1,"),
    (_tell_otherwise, ["FAIL decided as each policy says, and told so: 1 not"], "lost 0,"),
    (_decide_twice, ["FAIL decided twice: 1"], "decided twice 1,"),
    (
        lambda p: p.update(replays_through=["GetClaim: admitted 2 times"]),
        ["FAIL replays accepted: 1"],
        "replays accepted 1,",
    ),
    (
        lambda p: p["replayer"].accepted.append("SubmitClaim OK"),
        ["FAIL replays accepted: 1"],
        "replays accepted 1,",
    ),
    (
        lambda p: p.update(
            replayer=SimpleNamespace(**{**vars(p["replayer"]), "refused": 0, "outcomes": Counter()})
        ),
        ["FAIL replays refused: 0 of 4", "FAIL replays refused as seen before (NONCE_REPLAYED): 0"],
        "replays accepted 0,",
    ),
    (
        lambda p: p.update(nonce_store_losses=0),
        ["FAIL Redis flushes the gateway noticed: 0 losses for 1 flushes"],
        "lost 0,",
    ),
    (
        lambda p: p.update(replay_log=(1, 2, False)),
        ["FAIL replayed captures' original calls in the access log: 1 of 2"],
        "lost 0,",
    ),
    (
        lambda p: p.update(audit=VerifyReport(entries=12, findings=[Finding("root", "mismatch", 3)])),
        [AUDIT_FAIL.format(2)],
        "audit FAILED,",
    ),
    (lambda p: p.update(witnessed=1), [AUDIT_FAIL.format(1)], "audit FAILED,"),
    (
        _lose_an_audit_entry,
        ["FAIL audit log holds each claim's state changes once, in order"],
        "audit FAILED,",
    ),
    (_unbalance, ["FAIL trial balance: 100"], "trial balance 100"),
    (
        lambda p: p.update(
            claims={**p["claims"], A: dataclasses.replace(p["claims"][A], holds_envelope=True)}
        ),
        ["FAIL envelopes kept after their last delivery: 1"],
        "lost 0,",
    ),
    (
        lambda p: p["his"].given_up.append("SOAK-r-2"),
        ["FAIL every claim acknowledged (1 given up)"],
        "lost 0,",
    ),
    (
        lambda p: p["billing"].errors.update({"PostPayment FAILED_PRECONDITION": 1}),
        ["FAIL no call refused for good (besides replays)"],
        "lost 0,",
    ),
    (
        lambda p: p["attempts"].update({"GetClaim INTERNAL RPC_FAILED": 1}),
        ["FAIL no INTERNAL from a service"],
        "lost 0,",
    ),
    (lambda p: p["crashes"].update({"claim_router": 1}), ["FAIL no INTERNAL from a service"], "lost 0,"),
    (_short_kills, ["FAIL chaos as planned (2, 1, 1, 1): (1, 1, 1, 1)"], "1 kills,"),
    (
        lambda p: p["tally"].problems.append("billing had exited on its own (code 1) before its kill"),
        ["FAIL chaos as planned (2, 1, 1, 1): (2, 1, 1, 1)"],
        "lost 0,",
    ),
    (
        lambda p: p.update(unsettled=["hub not settled after 240 s"]),
        ["FAIL hub not settled after 240 s"],
        "lost 0,",
    ),
]


@pytest.mark.parametrize(("fault", "expected", "summary"), FAULTS)
def test_each_fault_fails_the_run_with_its_own_line(
    fault: Callable[[dict[str, Any]], None], expected: list[str], summary: str
) -> None:
    parts = clean()
    fault(parts)
    ok, lines = report.report(build(parts))
    assert not ok
    assert fails(lines) == expected
    assert summary in lines[-1]


@pytest.mark.parametrize("seed", range(20))
def test_ci_sized_chaos_kills_every_process_on_the_claim_path(seed: int) -> None:
    """CI's soak kills 5 times, fewer than the 6 hub processes: every process a
    claim passes through must still be among them."""
    events = schedule(1000, 5, 5, 3, 3, random.Random(seed))
    killed = Counter(e for _, e in events if e in HUB)
    assert set(CLAIM_PATH) <= set(killed) and sum(killed.values()) == 5
    assert max(killed.values()) == 1
    points = [p for p, _ in events]
    assert points == sorted(points) and points[0] >= 30 and points[-1] < 900


def test_the_full_soak_kills_each_hub_process_five_times() -> None:
    events = schedule(10_000, 30, 5, 3, 3, random.Random(1))
    assert Counter(e for _, e in events if e in HUB) == Counter({name: 5 for name in HUB})
    assert Counter(e for _, e in events if e not in HUB) == Counter({FLUSH: 5, PG: 3, INSURERS: 3})


def test_the_cohost_layouts_schedule_kills_its_own_processes() -> None:
    hub, claim_path = hub_of("cohost")
    assert hub == ("audit_log", "billing", "router_adapter", "authz", "envoy")
    assert claim_path == ("router_adapter", "envoy", "authz")
    events = schedule(10_000, 30, 5, 3, 3, random.Random(1), "cohost")
    assert Counter(e for _, e in events if e in hub) == Counter({name: 6 for name in hub})
    # Fewer kills than processes: the claim path's go first.
    few = schedule(1000, 3, 0, 0, 0, random.Random(2), "cohost")
    assert {e for _, e in few} == set(claim_path)
