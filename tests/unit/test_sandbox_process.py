"""`python -m sandbox` as its own process: one TLS gRPC port for its gRPC
insurers, one HTTPS port for its webhook insurers (each told apart by the push's
endpoint key / path), pull loops, a plaintext health port that says SERVING
once all are up, a clean stop on SIGTERM; unusable arguments exit 2 with a
message that names the problem (and never a secret)."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from iclaim_ops.devstack.stack import free_ports
from iclaim.insurer.verify import GRPC_METHOD
from iclaim.v1 import insurer_endpoint_pb2 as epb
from tests.support.insurer_kit import (
    Party,
    delivery,
    delivery_json,
    make_tls,
    push_headers,
    write_credentials,
)

GRPC_INSURERS = ["AIA", "MTL"]
WEBHOOK_INSURERS = ["TLI", "OLI"]
PULL_INSURERS = ["BLA"]
REPO = Path(__file__).resolve().parents[2]


def sandbox_file(folder: Path) -> tuple[Path, dict[str, Party], Path]:
    """A sandbox.json: the kit's format plus each insurer's delivery mode."""
    tls = make_tls(folder / "tls")
    codes = GRPC_INSURERS + WEBHOOK_INSURERS + PULL_INSURERS
    path, parties = write_credentials(folder, codes, tls, pull=tuple(PULL_INSURERS))
    data = json.loads(path.read_text())
    modes = {**dict.fromkeys(GRPC_INSURERS, "grpc"), **dict.fromkeys(WEBHOOK_INSURERS, "webhook")}
    for entry in data["insurers"]:
        entry["delivery"] = modes.get(entry["code"], "pull")
    path.write_text(json.dumps(data))
    return path, parties, tls.ca


@dataclass
class Sandbox:
    proc: asyncio.subprocess.Process
    parties: dict[str, Party]
    ca: bytes
    grpc: str
    webhook: str
    health: str
    log: Path


async def start_sandbox(folder: Path, *extra: str) -> asyncio.subprocess.Process:
    log = (folder / "sandbox.log").open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sandbox", *extra, cwd=REPO, stdout=log, stderr=log
        )
    finally:
        log.close()


async def health_status(addr: str) -> int | None:
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return None
        return int(resp.status)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    path, parties, ca = sandbox_file(tmp_path)
    grpc_addr, webhook_addr, health_addr = (f"127.0.0.1:{port}" for port in free_ports(3))
    proc = await start_sandbox(
        tmp_path,
        "--credentials", str(path),
        "--grpc", grpc_addr,
        "--webhook", webhook_addr,
        "--health", health_addr,
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    box = Sandbox(
        proc, parties, ca.read_bytes(), grpc_addr, webhook_addr, health_addr, tmp_path / "sandbox.log"
    )
    try:
        async with asyncio.timeout(30):
            while await health_status(health_addr) != health_pb2.HealthCheckResponse.SERVING:
                assert proc.returncode is None, box.log.read_text()
                await asyncio.sleep(0.1)
        yield box
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def grpc_push(box: Sandbox, party: Party, *, signer: Party | None = None) -> grpc.StatusCode:
    body = epb.ReceiveClaimRequest(delivery=delivery(party)).SerializeToString()
    headers = push_headers((signer or party).creds, GRPC_METHOD, body)
    creds = grpc.ssl_channel_credentials(root_certificates=box.ca)
    async with grpc.aio.secure_channel(box.grpc, creds) as ch:
        call = ch.unary_unary(GRPC_METHOD)
        try:
            await call(body, metadata=tuple(headers.items()), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def webhook_push(box: Sandbox, code: str, body: bytes, headers: dict[str, str]) -> int:
    ctx = ssl.create_default_context(cadata=box.ca.decode())
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://{box.webhook}/insurers/{code}/claims",
            data=body,
            headers={"content-type": "application/json", **headers},
            ssl=ctx,
        ) as resp,
    ):
        return resp.status


async def test_grpc_insurers_share_one_tls_port_told_apart_by_endpoint_key(sandbox: Sandbox) -> None:
    aia, mtl = sandbox.parties["AIA"], sandbox.parties["MTL"]
    assert await grpc_push(sandbox, aia) == grpc.StatusCode.OK
    assert await grpc_push(sandbox, mtl) == grpc.StatusCode.OK
    # A webhook or pull insurer's key is not served on the gRPC port.
    assert await grpc_push(sandbox, sandbox.parties["TLI"]) == grpc.StatusCode.UNAUTHENTICATED


async def test_webhook_insurers_each_have_their_path(sandbox: Sandbox) -> None:
    tli = sandbox.parties["TLI"]
    d = delivery(tli)
    body = delivery_json(d)
    assert (
        await webhook_push(sandbox, "TLI", body, push_headers(tli.creds, "POST /insurers/TLI/claims", body))
        == 200
    )
    # The same claim again is a duplicate, still "taken" (§10.3).
    again = push_headers(tli.creds, "POST /insurers/TLI/claims", body)
    assert await webhook_push(sandbox, "TLI", body, again) == 409
    # Signed for TLI's path but posted to OLI's: refused.
    wrong = push_headers(tli.creds, "POST /insurers/TLI/claims", body)
    assert await webhook_push(sandbox, "OLI", body, wrong) == 401
    # A gRPC insurer has no webhook route.
    aia = sandbox.parties["AIA"]
    assert (
        await webhook_push(sandbox, "AIA", body, push_headers(aia.creds, "POST /insurers/AIA/claims", body))
        == 404
    )


async def test_sigterm_stops_cleanly_and_health_goes_away(sandbox: Sandbox) -> None:
    sandbox.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sandbox.proc.wait(), 20) == 0, sandbox.log.read_text()
    assert await health_status(sandbox.health) is None


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["insurers"][0].pop("delivery"), "insurer AIA: delivery must be grpc, webhook or pull"),
        (lambda d: d["insurers"][0].update(delivery="smtp"), "delivery must be grpc, webhook or pull"),
        (lambda d: d["insurers"][-1].update(delivery="grpc"), "BLA: a push insurer needs endpoint_key_id"),
        (lambda d: d["insurers"][0].pop("secret"), "secret must be a non-empty string"),
    ],
)
async def test_unusable_credentials_exit_2_naming_the_problem(
    tmp_path: Path, change: Any, message: str
) -> None:
    path, _, _ = sandbox_file(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    _write(path, data)
    proc = await start_sandbox(
        tmp_path, "--credentials", str(path), "--grpc", "127.0.0.1:0", "--webhook", "127.0.0.1:0"
    )
    assert await asyncio.wait_for(proc.wait(), 30) == 2
    out = (tmp_path / "sandbox.log").read_text()
    assert message in out
    for entry in data["insurers"]:
        if "secret" in entry:
            assert entry["secret"] not in out
        assert entry["encryption_private_jwk"]["d"] not in out


async def test_a_missing_listen_address_exits_2(tmp_path: Path) -> None:
    path, _, _ = sandbox_file(tmp_path)
    proc = await start_sandbox(tmp_path, "--credentials", str(path), "--grpc", "127.0.0.1:0")
    assert await asyncio.wait_for(proc.wait(), 30) == 2
    assert "an address is needed" in (tmp_path / "sandbox.log").read_text()


@pytest.mark.parametrize("env", [{"ICLAIM_SIM_REVIEW_S": "soon"}, {"ICLAIM_SIM_SLOW_S": "-1"}])
async def test_bad_timing_knobs_exit_2(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, _ = sandbox_file(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    proc = await start_sandbox(
        tmp_path, "--credentials", str(path), "--grpc", "127.0.0.1:0", "--webhook", "127.0.0.1:0"
    )
    assert await asyncio.wait_for(proc.wait(), 30) == 2
    assert next(iter(env)) in (tmp_path / "sandbox.log").read_text()
