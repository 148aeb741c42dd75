"""`python -m bench.kit_cost [N]`: the insurer kit's CPU per decided claim, in
process, one claim in flight: a real inbox (sqlite in a temp dir, the default
synchronous=FULL), real envelopes both ways (generated keys), the default
handler, and an in-process stand-in for the gateway. Claims are sealed to the
insurer beforehand (that is the hospital's work, not measured).

Per claim: inbox.put (as a push does) then Worker.process. Prints CPU µs per
claim (time.process_time: every thread, so the inbox's sqlite thread counts)
and wall µs, split by stage. The split wraps the names the worker calls, so
each stage's figure includes the event loop's work for that call (for the
inbox: the thread handoff). Env BENCH_KIT_LOOP=uvloop runs on uvloop;
BENCH_KIT_ANSWER=1 takes each claim as a push answered with its decision
(protocol §10.6: Worker.answer, one inbox commit, no PostDecision) instead.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iclaim.crypto import signing
from iclaim.crypto.envelope import generate_encryption_key, open_envelope, seal
from iclaim.fhir import parse_claim_response
from iclaim.fhir.claim import synthetic_claim
from iclaim.insurer import worker as worker_mod
from iclaim.insurer.credentials import InsurerCredentials, load_all_insurer_credentials
from iclaim.insurer.handler import ApproveInFull
from iclaim.insurer.inbox import DECIDED, Inbox
from iclaim.v1 import insurer_service_pb2 as ipb

INSURER = "AIA"
HOSPITAL = "10670"
WARMUP = 30


class Gateway:
    """What the worker calls on the gateway; keeps the envelopes to check a few."""

    def __init__(self, hospital_pub: dict[str, Any]) -> None:
        self._pub = hospital_pub
        self.posted: list[str] = []

    async def hospital_key(self, hospital_code: str) -> dict[str, Any]:
        return dict(self._pub)

    async def post_decision(
        self,
        transaction_id: str,
        *,
        state: int,
        approved_amount_satang: int,
        decision_envelope: str,
        reason_code: str = "",
    ) -> None:
        self.posted.append(decision_envelope)

    async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[ipb.ClaimDelivery]:
        return []


class Meter:
    """CPU and wall seconds per stage, from wrappers around what the worker calls."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.on = False

    def sync(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                if self.on:
                    self.cpu[stage] += time.process_time() - t

        return timed

    def coro(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def timed(*a: Any, **kw: Any) -> Any:
            t = time.process_time()
            try:
                return await fn(*a, **kw)
            finally:
                if self.on:
                    self.cpu[stage] += time.process_time() - t

        return timed


def _credentials(folder: Path) -> tuple[InsurerCredentials, dict[str, Any]]:
    priv, pub = generate_encryption_key(f"{INSURER}-k1")
    entry = {
        "code": INSURER,
        "key_id": "aia-k1",
        "secret": signing.b64url(secrets.token_bytes(32)),
        "encryption_private_jwk": priv,
    }
    path = folder / "insurers.json"
    path.write_text(json.dumps({"gateway": "127.0.0.1:1", "insurers": [entry]}))
    [creds] = load_all_insurer_credentials(path)
    return creds, pub


def _deliveries(n: int, insurer_pub: dict[str, Any]) -> list[ipb.ClaimDelivery]:
    out = []
    for i in range(n):
        ref, amount = f"C-{i:06d}-{secrets.token_hex(3)}", 10_000 + 137 * i
        doc = synthetic_claim(HOSPITAL, INSURER, ref, f"POL-{i}", amount)
        sealed = seal(
            doc, insurer_pub, sender=HOSPITAL, recipient=INSURER, claim_ref=ref, amount_satang=amount
        )
        out.append(
            ipb.ClaimDelivery(
                transaction_id=f"txn_{i:06d}_{secrets.token_hex(6)}",
                hospital_code=HOSPITAL,
                claim_ref=ref,
                billed_amount_satang=amount,
                envelope=sealed,
            )
        )
    return out


def _instrument(meter: Meter) -> None:
    """Wraps the stages the worker goes through, by name where they exist (the
    bench runs against older and newer trees alike)."""
    stages = {
        "open_claim": "open+validate claim",
        "build_claim_response": "build response",
        "claim_response_document": "build response",
        "seal": "seal",
        "seal_with": "seal",
    }
    for name, stage in stages.items():
        if hasattr(worker_mod, name):
            setattr(worker_mod, name, meter.sync(stage, getattr(worker_mod, name)))
    for name in ("get", "staged", "stage", "mark", "put", "state_of", "load", "put_with_posts"):
        fn = getattr(Inbox, name, None)
        if fn is not None:
            setattr(Inbox, name, meter.coro(f"inbox.{name}", fn))


async def _run(n: int, answer: bool = False) -> dict[str, Any]:
    meter = Meter()
    _instrument(meter)
    with tempfile.TemporaryDirectory(prefix="kit-cost-") as tmp:
        folder = Path(tmp)
        creds, insurer_pub = _credentials(folder)
        hospital_priv, hospital_pub = generate_encryption_key(f"{HOSPITAL}-k1")
        deliveries = _deliveries(n + WARMUP, insurer_pub)
        inbox = await Inbox.open(folder / "state")
        gateway = Gateway(hospital_pub)
        handler = ApproveInFull()
        worker = worker_mod.Worker(inbox, {INSURER: creds}, {INSURER: handler}, {INSURER: gateway})
        decide = meter.coro("decide (handler)", handler.decide)
        handler.decide = decide  # type: ignore[method-assign]
        walls: list[float] = []
        try:
            for i, d in enumerate(deliveries):
                if i == WARMUP:
                    meter.on = True
                    cpu0 = time.process_time()
                w0 = time.perf_counter()
                if answer:
                    _, post = await worker.answer(INSURER, d)
                    if post is None:
                        raise SystemExit(f"claim {i} was not answered in the push")
                    gateway.posted.append(post.envelope)  # what the push's answer carries
                    state = DECIDED  # stored decided with the answer (counted below)
                else:
                    await inbox.put(INSURER, d)
                    state = await worker.process(INSURER, d.transaction_id)
                walls.append(time.perf_counter() - w0)
                if state != DECIDED:
                    raise SystemExit(f"claim {i} ended {state!r}, not decided")
            cpu = time.process_time() - cpu0
            if (await inbox.counts()).get(DECIDED) != len(deliveries):
                raise SystemExit("not every claim ended decided")
        finally:
            await worker.close()
            await inbox.close()
    # The hospital can read what was posted.
    for envelope, d in zip(gateway.posted[-3:], deliveries[-3:], strict=True):
        _, body = open_envelope(envelope, hospital_priv)
        response = parse_claim_response(body)
        assert response.claim_ref == d.claim_ref and response.state == "APPROVED"
    walls = walls[WARMUP:]
    return {"cpu": cpu, "stages": dict(meter.cpu), "walls": walls}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else int(os.environ.get("BENCH_KIT_CLAIMS", "1000"))
    loop = os.environ.get("BENCH_KIT_LOOP", "asyncio")
    answer = os.environ.get("BENCH_KIT_ANSWER", "") == "1"
    if loop == "uvloop":
        import uvloop

        result = uvloop.run(_run(n, answer))
    else:
        result = asyncio.run(_run(n, answer))
    us = 1e6 / n
    total = result["cpu"] * us
    mode = "answered in the push" if answer else "posted"
    print(f"insurer kit, {n} claims, one in flight, loop={loop}, decisions {mode}")
    print(f"  CPU per decided claim     {total:8.0f} µs")
    stages = result["stages"]
    inbox = {k: v * us for k, v in stages.items() if k.startswith("inbox.")}
    accounted = sum(inbox.values())
    for stage in ("open+validate claim", "decide (handler)", "build response", "seal"):
        value = stages.get(stage, 0.0) * us
        accounted += value
        print(f"    {stage:<24}{value:8.0f} µs")
    calls = ", ".join(f"{k[6:]} {v:.0f}" for k, v in sorted(inbox.items()))
    print(f"    {'inbox':<24}{sum(inbox.values()):8.0f} µs  ({calls})")
    print(f"    {'rest (worker, loop)':<24}{total - accounted:8.0f} µs")
    walls = sorted(result["walls"])
    print(
        f"  wall per claim            {statistics.mean(walls) * 1e6:8.0f} µs mean,"
        f" {walls[len(walls) // 2] * 1e6:.0f} p50, {walls[int(len(walls) * 0.99)] * 1e6:.0f} p99"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
