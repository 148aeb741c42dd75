"""What the soak prints: what happened (chaos, claims, billing, replays, audit),
then each check, ok or FAIL with its first findings, then the summary line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from bench.soak import checks
from bench.soak.billing import Billing
from bench.soak.chaos import Tally
from bench.soak.config import SoakConfig
from bench.soak.decisions import DecisionReposter
from bench.soak.evidence import Evidence
from bench.soak.his import FINAL, His, View
from bench.soak.replay import Replayer
from iclaim.audit.verifier import VerifyReport
from iclaim.v1 import claim_service_pb2 as pb

SHOWN = 20  # findings printed per check


@dataclass
class Run:
    cfg: SoakConfig
    seconds: dict[str, float]  # load, settle, total
    his: His
    billing: Billing
    reposter: DecisionReposter
    replayer: Replayer
    tally: Tally
    attempts: Counter[str]  # every signed attempt of the soak's clients, by outcome
    found: Evidence
    audit: VerifyReport
    crashes: Counter[str]  # `rpc_crash` log lines per process
    unsettled: list[str]
    # Replays the access log shows admitted beyond their original call.
    replays_through: list[str]
    replay_log: tuple[int, int, bool]  # originals found in the access log, captures replayed, enough
    witnessed: int  # audit checkpoints kept outside the database during the run


def told(key: tuple[str, str], view: View) -> checks.Outcome:
    final = view.state in FINAL
    name = pb.ClaimState.Name(view.state).removeprefix("CLAIM_STATE_") if final else ""
    return checks.Outcome(key, view.planned.policy, view.planned.amount, name)


def report(r: Run) -> tuple[bool, list[str]]:
    """(every check passed, the lines to print; the last is the summary)."""
    out: list[str] = []
    failed: list[str] = list(r.unsettled)
    out.extend(f"FAIL {u}" for u in r.unsettled)
    acknowledged = r.his.acknowledged()
    acked = {key: v.transaction_ids for key, v in acknowledged.items()}
    lost = checks.lost(acked, r.found.claims)
    outcomes = checks.wrong_outcomes((told(key, v) for key, v in acknowledged.items()), r.found.claims)
    router = checks.by_claim(r.found.router_changes)
    audit = checks.by_claim(r.found.audit_changes)
    twice = checks.decided_twice(router, audit, r.found.billing_events, r.found.ledger)
    audit_problems = checks.audit_problems(router, audit)
    histories = [f"{tid}: {p}" for tid, h in router.items() for p in checks.history_problems(h)]
    histories += checks.history_ends(r.found.claims.values(), router)
    ledger_problems = checks.ledger_problems(r.found.ledger, r.found.claims.values())
    t, rp = r.tally, r.replayer
    states = Counter(c.state for c in r.found.claims.values())
    internal = {k: n for k, n in r.attempts.items() if " INTERNAL" in k and "no status details" not in k}
    s = r.seconds

    out.append(
        f"seed {r.cfg.seed}; load {s['load']:.0f} s, settle {s['settle']:.0f} s, total {s['total']:.0f} s"
    )
    kills = ", ".join(f"{n} {name}" for name, n in sorted(t.kills.items()))
    out.append(
        f"chaos: {kills}; {t.flushes} Redis flushes, {t.pg_restarts} PostgreSQL restarts,"
        f" {t.insurer_kills} insurer kills"
    )
    out.extend(f"  {line}" for line in t.log)
    out.append(
        f"claims: {r.his.acked} acknowledged of {r.cfg.claims}, {r.his.resubmits} resubmitted after the"
        f" SDK gave up; router states {dict(sorted(states.items()))}"
    )
    b = r.billing
    out.append(
        f"billing: {b.invoices} invoices, {b.payments} payments, {b.paid_claims} claims paid;"
        f" {len(r.found.ledger.intake)} decisions recorded"
    )
    out.append(
        f"replays: {rp.sent} sent, {rp.refused} refused, {len(rp.accepted)} accepted,"
        f" {rp.unanswered_left} never answered; captured"
        f" {dict(rp.captured)}; {r.reposter.reposted} decisions re-posted as they were"
    )
    out.extend(f"  {k}: {n}" for k, n in sorted(rp.outcomes.items()))
    if r.his.notes:
        out.append("HIS notes: " + ", ".join(f"{k} {n}" for k, n in sorted(r.his.notes.items())))
    out.append(f"audit: {r.audit.summary()}; {len(r.found.audit_changes)} claim state changes")
    out.append("client attempts: " + ", ".join(f"{k} {n}" for k, n in sorted(r.attempts.items())))

    def check(ok: bool, what: str, details: Iterable[str] = ()) -> None:
        out.append(f"{'ok  ' if ok else 'FAIL'} {what}")
        out.extend(f"       {d}" for d in list(details)[:SHOWN])
        if not ok:
            failed.append(what)

    check(not lost, f"lost: {len(lost)}", lost)
    check(not outcomes, f"decided as each policy says, and told so: {len(outcomes)} not", outcomes)
    check(not twice, f"decided twice: {len(twice)}", (f"{tid}: {w}" for tid, w in twice.items()))
    accepted = rp.accepted + [f"{r} (the access log)" for r in r.replays_through]
    check(not accepted, f"replays accepted: {len(accepted)}", accepted)
    # A replay check that replayed nothing proves nothing.
    check(rp.refused > 0, f"replays refused: {rp.refused} of {rp.sent}")
    # Not only after flushes or for their age: the nonce check itself refused.
    by_nonce = sum(
        n for k, n in rp.outcomes.items() if k.startswith("refused") and k.endswith("NONCE_REPLAYED")
    )
    check(by_nonce > 0, f"replays refused as seen before (NONCE_REPLAYED): {by_nonce}")
    losses = r.found.nonce_store_losses
    check(losses >= t.flushes, f"Redis flushes the gateway noticed: {losses} losses for {t.flushes} flushes")
    found, replayed, covered = r.replay_log
    check(covered, f"replayed captures' original calls in the access log: {found} of {replayed}")
    check(
        r.audit.ok and r.witnessed > 1,
        f"audit log verifies against its signed checkpoints and the {r.witnessed} kept outside it"
        " during the run, under the key seen at the start",
        (str(f) for f in r.audit.findings),
    )
    check(not audit_problems, "audit log holds each claim's state changes once, in order", audit_problems)
    check(not histories, "router's state changes in order, each once, ending at the stored state", histories)
    check(r.found.ledger.lines_sum == 0, f"trial balance: {r.found.ledger.lines_sum}")
    check(not ledger_problems, "ledger agrees with the router's decisions", ledger_problems)
    payments = checks.payment_problems(r.found.ledger, r.found.claims.values(), r.billing.paid)
    check(not payments, "ledger and router agree with what the insurers paid", payments)
    kept = checks.envelopes_kept(r.found.claims.values()) + [
        f"{tid}: taken by its insurer" for tid in r.found.taken_with_envelope
    ]
    check(not kept, f"envelopes kept after their last delivery: {len(kept)}", kept)
    check(not r.his.given_up, f"every claim acknowledged ({len(r.his.given_up)} given up)", r.his.given_up)
    errors = r.his.errors + b.errors + r.reposter.errors
    check(not errors, "no call refused for good (besides replays)", (f"{k}: {n}" for k, n in errors.items()))
    bad = {**internal, **r.crashes}
    check(not bad, "no INTERNAL from a service", (f"{k}: {n}" for k, n in bad.items()))
    planned = (r.cfg.kills, r.cfg.flushes, r.cfg.pg_restarts, r.cfg.insurer_kills)
    done = (t.total_kills, t.flushes, t.pg_restarts, t.insurer_kills)
    check(done == planned and not t.problems, f"chaos as planned {planned}: {done}", t.problems)
    out.append(
        checks.final_line(
            r.his.acked, t.total_kills, t.flushes, t.pg_restarts, len(lost), len(twice), len(accepted),
            r.audit.ok and r.witnessed > 1 and not audit_problems, r.found.ledger.lines_sum,
        )
    )  # fmt: skip
    return not failed, out
