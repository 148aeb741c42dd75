"""`make soak` (`python -m bench.soak`): SOAK_CLAIMS claims (default 10,000) from
three hospitals to the 60 sandbox insurers (gRPC push, webhook push, pull) through
the whole clearinghouse on its own PostgreSQL and Redis, while a chaos driver
SIGKILLs hub processes (SOAK_KILLS, default 30), flushes Redis (SOAK_FLUSHES, 5),
restarts PostgreSQL (SOAK_PG_RESTARTS, 3), kills the sandbox insurers
(SOAK_INSURER_KILLS, 3) and captured signed requests are replayed throughout.
Then, once the hub has settled (at most SOAK_SETTLE_S), it checks and prints;
the last line is the summary, and the exit status is 1 if any check failed.

Other knobs: SOAK_CONCURRENCY (claims submitted at once, 24), SOAK_BILL_SHARE
(share of approved claims invoiced and paid, 0.2), SOAK_SEED, SOAK_LOG_LEVEL
(services' log level, WARNING), SOAK_KEEP=1 (keep the state folder and logs)."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench.soak import checks, evidence
from bench.soak.billing import Billing
from bench.soak.chaos import Chaos, schedule
from bench.soak.config import SoakConfig
from bench.soak.decisions import DecisionReposter
from bench.soak.his import His, plan
from bench.soak.infra import soak_stack
from bench.soak.replay import Replayer
from bench.soak.report import Run, report
from bench.soak.wire import Captured, Tap, tapped
from bench.soak.witness import Witness
from iclaim.client.billing import BillingClient
from iclaim.client.channel import GatewayClient
from iclaim.client.credentials import Credentials, load_dev_credentials
from iclaim.client.hospital import HospitalClient
from iclaim.progress import progress
from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc
from iclaim_ops.audit_cli import verify_database
from iclaim_ops.devstack.stack import Stack

CAPTURE_SHARE = 0.03  # of the hospitals' accepted SubmitClaim/GetClaim attempts
SETTLE_POLL_S = 1.0
BILLING_CAPTURED = frozenset({"CreateInvoice", "AcknowledgeInvoice", "PostPayment"})


def say(text: str) -> None:
    print(text, flush=True)


CRASH_SIGNS = ("rpc_crash", "Task exception was never retrieved")


def service_crashes(logs_dir: Path) -> Counter[str]:
    """Handlers that raised (the hub's interceptor logs `rpc_crash` and answers
    INTERNAL) and background tasks that died with an exception nobody awaited,
    per log file."""
    out: Counter[str] = Counter()
    for log in sorted(logs_dir.glob("*.log")):
        with open(log, errors="replace") as fh:
            out[log.stem] += sum(1 for line in fh if any(sign in line for sign in CRASH_SIGNS))
    return +out


async def sign_checkpoint(stack: Stack) -> None:
    """A checkpoint over the whole log, so that the verifier covers every entry."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.audit}") as ch:
        await audit_log_pb2_grpc.AuditLogServiceStub(ch).SignCheckpoint(
            audit_log_pb2.SignCheckpointRequest(), timeout=30
        )


async def wait_settled(
    what: str, deadline: float, pending: Callable[[], Awaitable[dict[str, int]]]
) -> dict[str, int]:
    """Polls `pending` until it is empty or the deadline passes; returns what was left."""
    left: dict[str, int] = {}
    last_said = 0.0
    while time.monotonic() < deadline:
        left = await pending()
        if not left:
            return {}
        if time.monotonic() - last_said > 10:
            say(f"settling ({what}): {left}")
            last_said = time.monotonic()
        await asyncio.sleep(SETTLE_POLL_S)
    return left


async def run(cfg: SoakConfig, state_dir: Path) -> tuple[bool, list[str]]:
    rng = random.Random(cfg.seed)
    run_id = secrets.token_hex(3)
    t0 = time.monotonic()
    unsettled: list[str] = []
    async with soak_stack(state_dir, cfg.log_level, cfg.layout) as (stack, pg, redis):
        say(f"soak: stack up in {time.monotonic() - t0:.0f} s (gateway {stack.gateway})")
        # The checkpoint key as it is before any chaos; checkpoints kept as the run goes.
        _, key_at_start = await verify_database(stack.database_url)
        witness = Witness(f"127.0.0.1:{stack.ports.audit}")
        witness.start()
        creds_file = state_dir / "credentials.json"
        sandbox = json.loads(stack.sandbox_credentials.read_text())
        insurers = [e["code"] for e in sandbox["insurers"]]
        hospitals = [h["code"] for h in json.loads(creds_file.read_text())["hospitals"]]

        def insurer_creds(code: str) -> Credentials:
            return load_dev_credentials(code, stack.sandbox_credentials)

        def any_creds(code: str) -> Credentials:
            return load_dev_credentials(code, creds_file if code in hospitals else stack.sandbox_credentials)

        attempts: Counter[str] = Counter()
        replayer = Replayer(stack.gateway, Path(sandbox["ca_cert"]), rng)

        def sampled(c: Captured) -> None:
            if rng.random() < CAPTURE_SHARE:
                replayer.capture(c)

        clients = {
            code: await tapped(
                HospitalClient(any_creds(code)), Tap(attempts, sampled, {"SubmitClaim", "GetClaim"})
            )
            for code in hospitals
        }

        def wrap(methods: set[str]) -> Callable[[Any], Awaitable[Any]]:
            async def apply(client: GatewayClient) -> GatewayClient:
                return await tapped(client, Tap(attempts, replayer.capture, methods))

            return apply

        async def billing_tap(client: BillingClient) -> BillingClient:
            # A sample of billing's calls replayed too (a payment posted twice).
            return await tapped(client, Tap(attempts, sampled, BILLING_CAPTURED))

        billing = Billing(any_creds, cfg.bill_share, run_id, rng, billing_tap)
        planned = plan(cfg.claims, hospitals, insurers, run_id, rng)
        his = His(clients, planned, rng, billing.offer)
        reposter = DecisionReposter(his, insurer_creds, billing.chosen, rng, wrap({"PostDecision"}))
        events = schedule(
            cfg.claims, cfg.kills, cfg.flushes, cfg.pg_restarts, cfg.insurer_kills, rng, cfg.layout
        )
        chaos = Chaos(stack, pg, redis, his, replayer, events, rng)
        await chaos.open_gate()
        stop = asyncio.Event()
        background = [
            asyncio.create_task(replayer.run(stop)),
            asyncio.create_task(reposter.run(stop)),
            asyncio.create_task(billing.run()),
        ]
        t_load = time.monotonic()
        say(
            f"soak: {cfg.claims} claims to {len(insurers)} insurers from {len(hospitals)} hospitals,"
            f" {len(events)} chaos events (seed {cfg.seed}, hub layout {cfg.layout})"
        )
        with progress("soak claims", cfg.claims) as shown:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(his.submit_all(cfg.concurrency, shown.advance))
                tg.create_task(chaos.run())
        load_s = time.monotonic() - t_load
        say(f"soak: claims in, chaos over after {load_s:.0f} s; settling (at most {cfg.settle_s:.0f} s)")

        # Settle: the HIS sees every claim final, billing pays what it chose, the hub drains.
        deadline = time.monotonic() + cfg.settle_s

        async def following() -> dict[str, int]:
            return {"claims the HIS still follows": his.following} if his.following else {}

        followed = await wait_settled("clients", deadline, following)
        if followed:
            unsettled.append(f"not settled after {cfg.settle_s:.0f} s: {followed}")
        billing.flush()
        try:
            await asyncio.wait_for(background[2], max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            unsettled.append("billing did not finish its invoices and payments in time")
        stop.set()
        await asyncio.gather(*background[:2])
        await replayer.burst(20)  # and once more, on the settled system
        await replayer.settle()
        await his.stop_following()
        left = await wait_settled("hub", deadline, lambda: evidence.unsettled(stack.database_url))
        if left:
            unsettled.append(f"not settled after {cfg.settle_s:.0f} s: {left}")
        settle_s = time.monotonic() - t_load - load_s
        await sign_checkpoint(stack)
        await witness.stop()
        await witness.read_once()  # the one just signed, over the whole log
        found_in_db = await evidence.read(stack.database_url)
        audit_report, _ = await verify_database(
            stack.database_url, verifier_key=key_at_start, witnessed=witness.notes
        )
        crashes = service_crashes(stack.logs_dir)
        admitted = evidence.admitted_requests(stack.access_log)
        replay_tokens = evidence.replay_tokens(stack.master_key, replayer.replayed)
        replays_through = checks.replays_admitted(admitted, replay_tokens)
        found, covered = checks.replay_log_covered(admitted, replay_tokens)
        replay_log = (found, len(replay_tokens), covered)
        # A process that died on its own after its last planned kill went unnoticed so far.
        unsettled.extend(
            f"{name} not running at the end (exit code {code})"
            for name in sorted(stack.procs)
            if (code := stack.exited(name)) is not None
        )
        for client in clients.values():
            await client.close()
        await billing.close()
        await reposter.close()
        await replayer.close()

    return report(
        Run(
            cfg, {"load": load_s, "settle": settle_s, "total": time.monotonic() - t0}, his, billing, reposter,
            replayer, chaos.tally, attempts, found_in_db, audit_report, crashes, unsettled, replays_through,
            replay_log, len(witness.notes),
        )
    )  # fmt: skip


def main() -> int:
    cfg = SoakConfig.from_env()
    state_dir = Path(tempfile.mkdtemp(prefix="iclaim-soak-"))
    ok = False
    try:
        ok, lines = asyncio.run(run(cfg, state_dir))
        for line in lines:
            say(line)
    finally:
        if ok and not cfg.keep:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            print(f"soak: state and logs kept in {state_dir}", file=sys.stderr, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
