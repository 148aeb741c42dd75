"""The `iclaim` CLI against the running stack, as an HIS developer would use it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration


async def iclaim(stack: RunningStack, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "iclaim.cli",
        "--credentials",
        str(stack.credentials_path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_insurers_sample_submit_get_watch(running_stack: RunningStack, tmp_path: Path) -> None:
    code, out = await iclaim(running_stack, "insurers")
    assert code == 0, out
    assert len([line for line in out.splitlines() if line.strip()]) == 61
    assert any(line.startswith("AIA ") and " LIFE " in line for line in out.splitlines())

    code, out = await iclaim(
        running_stack,
        "sample-claim",
        "--insurer",
        "MTL",
        "--policy",
        "LIMIT-50000-1",
        "--amount-satang",
        "90000",
    )
    assert code == 0, out
    claim_file = tmp_path / "claim.json"
    claim_file.write_text(out)

    code, out = await iclaim(running_stack, "submit", str(claim_file), "--insurer", "MTL")
    assert code == 0, out
    decoder = json.JSONDecoder()
    claim, end = decoder.raw_decode(out)
    response, _ = decoder.raw_decode(out[end:].lstrip())
    assert claim["state"] == "CLAIM_STATE_PARTIALLY_APPROVED"
    assert claim["approved_amount_satang"] == "50000"
    assert response["resourceType"] == "ClaimResponse"

    tid = claim["transaction_id"]
    code, out = await iclaim(running_stack, "claim", "get", tid)
    assert code == 0 and json.loads(out)["transaction_id"] == tid
    code, out = await iclaim(running_stack, "claim", "watch", tid)
    assert code == 0 and "CLAIM_STATE_PARTIALLY_APPROVED" in out

    code, out = await iclaim(running_stack, "claim", "get", "txn_" + "0" * 28)
    assert code == 1 and "NOT_FOUND" in out

    # The hospital proves its own audit trail through the gateway.
    code, out = await iclaim(running_stack, "audit", "trail")
    assert code == 0 and "OK:" in out and "entries of 10670" in out, out


async def test_admin_against_the_dev_stack(running_stack: RunningStack) -> None:
    """The dev stack's admin.json is all `iclaim admin` needs (§11); the sandbox
    insurers are registered with their mode and the sandbox's endpoints."""
    config = str(running_stack.stack.admin_config)
    ports = running_stack.stack.ports
    code, out = await iclaim(running_stack, "admin", "deliveries", "list", "--admin-config", config)
    assert code == 0, out
    assert "deliveries" in json.loads(out)
    # Setting what is already true changes nothing and shows the entry.
    for insurer, delivery, endpoint in (
        ("AIA", "grpc", f"127.0.0.1:{ports.sandbox_grpc}"),
        ("MTL", "webhook", f"https://127.0.0.1:{ports.sandbox_webhook}/insurers/MTL/claims"),
        ("TLI", "pull", ""),
    ):
        code, out = await iclaim(
            running_stack, "admin", "insurer", "set", insurer, "--available", "true", "--admin-config", config
        )
        assert code == 0, out
        entry = json.loads(out)
        assert (entry["delivery"], entry["endpoint"]) == (delivery, endpoint), entry
