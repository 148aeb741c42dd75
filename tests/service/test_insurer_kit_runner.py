"""One process, many insurers, every mode (how the sandbox runs): a gRPC port,
a webhook port and pull loops sharing one inbox and worker; and the
`iclaim insurer serve` command end to end over HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

from iclaim.insurer.handler import Decision, IncomingClaim
from iclaim.insurer.inbox import DB_NAME, DECIDED, Inbox
from iclaim.insurer.runner import ServePlan, pull_loop, start
from iclaim.insurer.verify import GRPC_METHOD
from iclaim.v1 import insurer_endpoint_pb2 as epb
from tests.support.insurer_kit import (
    FakeGateway,
    client_ssl,
    delivery,
    delivery_json,
    grpc_channel,
    make_tls,
    push_headers,
    write_credentials,
)

REPO = Path(__file__).resolve().parents[2]


class ByPolicy:
    """§8-style rules, enough to see each insurer's handler is used."""

    async def decide(self, claim: IncomingClaim) -> Decision:
        if claim.policy_number.startswith("DENY-"):
            return Decision.deny("POLICY_NOT_FOUND")
        return Decision.approve(claim.billed_satang)


async def test_grpc_webhook_and_pull_insurers_in_one_process(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    _, parties = write_credentials(tmp_path, ["GRPCINS", "HOOKINS", "PULLINS"], tls, pull=("PULLINS",))
    gateways = {code: FakeGateway() for code in parties}
    pulled = delivery(parties["PULLINS"], policy="DENY-1")
    gateways["PULLINS"].to_pull.append(pulled)
    plan = ServePlan(
        grpc=[parties["GRPCINS"].creds],
        grpc_addr="127.0.0.1:0",
        webhook=[parties["HOOKINS"].creds],
        webhook_addr="127.0.0.1:0",
        pull=[parties["PULLINS"].creds],
    )
    running = await start(plan, ByPolicy(), tmp_path / "state", clients=gateways)
    try:
        assert running.grpc_port and running.webhook_port
        by_grpc = delivery(parties["GRPCINS"])
        body = epb.ReceiveClaimRequest(delivery=by_grpc).SerializeToString()
        async with grpc_channel(tls, running.grpc_port) as channel:
            method = channel.unary_unary(GRPC_METHOD, request_serializer=None)
            headers = push_headers(parties["GRPCINS"].creds, GRPC_METHOD, body)
            await method(body, metadata=tuple(headers.items()), timeout=10)

        by_hook = delivery(parties["HOOKINS"])
        raw = delivery_json(by_hook)
        headers = push_headers(parties["HOOKINS"].creds, "POST /insurers/HOOKINS/claims", raw)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl(tls))) as s:
            url = f"https://localhost:{running.webhook_port}/insurers/HOOKINS/claims"
            async with s.post(url, data=raw, headers={**headers, "content-type": "application/json"}) as r:
                assert r.status == 200

        for code, d in (("GRPCINS", by_grpc), ("HOOKINS", by_hook), ("PULLINS", pulled)):
            [posted] = await gateways[code].wait_for(1)
            assert posted.transaction_id == d.transaction_id
        assert gateways["PULLINS"].posted[0].reason_code == "POLICY_NOT_FOUND"
        # The worker marks a row decided just after its post: wait for that, or a
        # stop in between leaves it open (to be re-posted, byte for byte, next start).
        await _until_decided(tmp_path / "state", 3)
    finally:
        await running.stop()
    # Pull again after the lease: the same delivery is a duplicate, decided once.
    gateways["PULLINS"].to_pull.append(pulled)
    stop = asyncio.Event()
    loop = asyncio.create_task(
        pull_loop(parties["PULLINS"].creds, ByPolicy(), tmp_path / "state", stop, clients=gateways)
    )
    for _ in range(200):
        if not gateways["PULLINS"].to_pull:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(loop, 10)
    assert len(gateways["PULLINS"].posted) == 1
    inbox = await Inbox.open(tmp_path / "state")
    try:
        assert await inbox.counts() == {DECIDED: 3}
    finally:
        await inbox.close()


async def test_the_pull_loop_backs_off_when_the_gateway_fails_and_stops_on_its_event(tmp_path: Path) -> None:
    _, parties = write_credentials(tmp_path, ["PULLINS"], None, pull=("PULLINS",))

    class Down(FakeGateway):
        async def pull(self, max_claims: int = 10, wait_s: float = 0.0) -> list[object]:  # type: ignore[override]
            self.pulls += 1
            from tests.support.insurer_kit import rpc_error

            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "")

    down = Down()
    stop = asyncio.Event()
    loop = asyncio.create_task(
        pull_loop(parties["PULLINS"].creds, ByPolicy(), tmp_path / "s", stop, clients={"PULLINS": down})
    )
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(loop, 5)  # stops promptly even while backing off
    assert 1 <= down.pulls < 10  # backed off, did not spin


def _cli(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    # The SDK's own parser (hub plugins are not needed to serve an insurer).
    driver = (
        "import argparse, sys\n"
        "from iclaim import insurer_cli\n"
        "from iclaim.cli_groups import CommandGroups\n"
        "p = argparse.ArgumentParser(prog='iclaim')\n"
        "insurer_cli.register(CommandGroups(p.add_subparsers(dest='cmd', required=True)))\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "sys.exit(a.func(a))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'sdk'}"}
    return subprocess.Popen(
        [sys.executable, "-c", driver, *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )


# --answer-in-push: the hospital's key cannot be looked up (no gateway here), so the
# decision cannot be sealed in time; the push is still taken and the claim kept.
@pytest.mark.parametrize("answer_in_push", [False, True], ids=["post", "answer-in-push"])
async def test_iclaim_insurer_serve_takes_a_webhook_push_with_a_custom_handler(
    tmp_path: Path, answer_in_push: bool
) -> None:
    tls = make_tls(tmp_path / "tls")
    path, parties = write_credentials(tmp_path, ["AIA"], tls)
    (tmp_path / "my_rules.py").write_text(
        "from iclaim.insurer import Decision\n"
        "async def decide(claim):\n"
        "    return Decision.deny('POLICY_NOT_FOUND')\n"
    )
    proc = _cli(
        tmp_path,
        "insurer",
        "serve",
        "--credentials",
        str(path),
        "--webhook",
        "127.0.0.1:0",
        "--handler",
        "my_rules:decide",
        "--state-dir",
        "kit-state",
        *(["--answer-in-push"] if answer_in_push else []),
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 30)
        match = re.search(r"serving AIA by webhook on port (\d+)", line)
        assert match, line
        d = delivery(parties["AIA"])
        raw = delivery_json(d)
        headers = push_headers(parties["AIA"].creds, "POST /iclaim/claims", raw)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl(tls))) as s:
            url = f"https://localhost:{match.group(1)}/iclaim/claims"
            extra = {"x-iclaim-accepts-decision": "true"} if answer_in_push else {}
            async with s.post(
                url, data=raw, headers={**headers, **extra, "content-type": "application/json"}
            ) as r:
                assert r.status == 200
                assert "decision" not in await r.json()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Taken durably; the decision is still to be posted (the gateway here is
    # unreachable), so the next start resumes it.
    inbox = await Inbox.open(tmp_path / "kit-state")
    try:
        item = await inbox.get("AIA", d.transaction_id)
        assert item is not None and item.state == "received"
    finally:
        await inbox.close()


async def test_iclaim_insurer_serve_explains_a_bad_handler_or_file(tmp_path: Path) -> None:
    path, _ = write_credentials(tmp_path, ["AIA"], None)
    proc = _cli(tmp_path, "insurer", "serve", "--credentials", str(path), "--pull", "--handler", "nowhere:x")
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 2 and "nowhere" in err
    proc = _cli(tmp_path, "insurer", "serve", "--credentials", str(tmp_path / "absent.json"), "--pull")
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 2 and "cannot read" in err
    # A push mode without TLS material is refused up front.
    proc = _cli(tmp_path, "insurer", "serve", "--credentials", str(path), "--grpc", "127.0.0.1:0")
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 2 and "tls_cert and tls_key" in err


async def _until_decided(state_dir: Path, n: int) -> None:
    for _ in range(500):
        with contextlib.closing(sqlite3.connect(state_dir / DB_NAME)) as db:
            if db.execute("SELECT count(*) FROM deliveries WHERE state = ?", (DECIDED,)).fetchone()[0] >= n:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} rows decided")
