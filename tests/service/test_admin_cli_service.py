"""`iclaim admin …` against a running AdminService (real RegistryStore on a
scratch database): each §11 command prints one JSON object of the §11 shape;
refusals print `error: CODE REASON: …` and exit 1; the `iclaim` command
finds the admin config where the dev stack writes it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from iclaim.cli import build_parser
from iclaim.crypto.signing import b64url_decode
from iclaim_ops import admin_cli
from tests.support.admin import (
    PULL,
    PUSH,
    TOKEN,
    AdminEnv,
    Row,
    ca_pem,
    private_jwk,
    public_jwk,
    running_admin,
)

TXN_A = "txn_" + "a" * 28
TXN_B = "txn_" + "b" * 28
ENTRY_KEYS = {
    "code",
    "role",
    "display_name",
    "line",
    "available",
    "suspended",
    "delivery",
    "endpoint",
    "endpoint_ca_set",
    "endpoint_mtls",
    "encryption_kids",
    "current_kid",
    "endpoint_key_id",
    "health",
}


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[AdminEnv]:
    async with running_admin(database_url) as e:
        yield e


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, body in {
        "public": json.dumps(public_jwk("NEWCO-enc-1")),
        "private": json.dumps(private_jwk("NEWCO-enc-1")),
        "ca": ca_pem(),
    }.items():
        out[name] = tmp_path / name
        out[name].write_text(body)
    return out


async def _cli(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str, token: str = TOKEN
) -> tuple[int, Any, str]:
    """Runs one command in-process; (exit code, parsed stdout or None, stderr)."""
    args = build_parser().parse_args(
        ["admin", *argv, "--admin-config", str(env.admin_config(tmp_path, token))]
    )
    capsys.readouterr()
    with capture_logs():  # the in-process server's log lines are not the CLI's stdout
        rc = await admin_cli.run_async(args, env={})
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == (1 if rc == 0 else 0)  # one JSON object per command
    return rc, json.loads(lines[0]) if lines else None, err


async def test_insurer_add_prints_code_and_keys(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    rc, out, _ = await _cli(
        env,
        capsys,
        tmp_path,
        *["insurer", "add", "NEWCO", "--name", "New Co", "--line", "life", "--delivery", "webhook"],
        *["--endpoint", "https://newco.example/iclaim/claims", "--ca", str(files["ca"])],
        *["--encryption-jwk", str(files["public"]), "--mtls"],
    )
    assert rc == 0 and set(out) == {"code", "key_id", "secret", "endpoint_key_id", "endpoint_secret"}
    key = await env.registry.signing_key("NEWCO", out["key_id"])
    assert key is not None and key.secret == b64url_decode(out["secret"])
    ek = await env.registry.endpoint_key("NEWCO")
    assert ek is not None and (ek.key_id, ek.secret) == (
        out["endpoint_key_id"],
        b64url_decode(out["endpoint_secret"]),
    )
    p = await env.registry.principal("NEWCO")
    assert p is not None and p.endpoint_mtls and p.endpoint_ca_pem == files["ca"].read_text()

    # A pull insurer: no endpoint key in the output.
    rc, out, _ = await _cli(
        env,
        capsys,
        tmp_path,
        *["insurer", "add", "PULL2", "--name", "Pull Two", "--line", "non-life", "--delivery", "pull"],
        *["--encryption-jwk", str(files["public"])],
    )
    assert rc == 0 and set(out) == {"code", "key_id", "secret"} and out["code"] == "PULL2"


async def test_insurer_set_prints_the_registry_entry(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    rc, out, _ = await _cli(env, capsys, tmp_path, "insurer", "set", PUSH, "--available", "false")
    assert rc == 0 and set(out) == ENTRY_KEYS
    assert (out["code"], out["available"], out["delivery"], out["health"]) == (PUSH, False, "grpc", "unknown")
    rc, out, _ = await _cli(
        env, capsys, tmp_path, "insurer", "set", PUSH, "--ca", str(files["ca"]), "--mtls", "true"
    )
    assert rc == 0 and (out["endpoint_ca_set"], out["endpoint_mtls"]) == (True, True)
    rc, out, _ = await _cli(env, capsys, tmp_path, "insurer", "set", PUSH, "--ca", "")
    assert rc == 0 and out["endpoint_ca_set"] is False
    # pull -> grpc: the first endpoint key comes with the entry, once.
    rc, out, _ = await _cli(
        env, capsys, tmp_path, "insurer", "set", PULL, "--delivery", "grpc", "--endpoint", "pull.example:443"
    )
    assert rc == 0 and set(out) == ENTRY_KEYS | {"endpoint_secret"}
    ek = await env.registry.endpoint_key(PULL)
    assert ek is not None and ek.secret == b64url_decode(out["endpoint_secret"])


async def test_rotate_endpoint_key_prints_the_new_key(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, _ = await _cli(env, capsys, tmp_path, "insurer", "rotate-endpoint-key", PUSH)
    assert rc == 0 and set(out) == {"endpoint_key_id", "endpoint_secret"}
    ek = await env.registry.endpoint_key(PUSH)
    assert ek is not None and (ek.key_id, ek.secret) == (
        out["endpoint_key_id"],
        b64url_decode(out["endpoint_secret"]),
    )


async def test_hospital_add_prints_code_and_key(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, Path]
) -> None:
    rc, out, _ = await _cli(
        env,
        capsys,
        tmp_path,
        "hospital",
        "add",
        "11002",
        "--name",
        "Udon Demo",
        "--encryption-jwk",
        str(files["public"]),
    )
    assert rc == 0 and set(out) == {"code", "key_id", "secret"} and out["code"] == "11002"
    key = await env.registry.signing_key("11002", out["key_id"])
    assert key is not None and key.secret == b64url_decode(out["secret"])


async def test_deliveries_list_and_redrive(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    at = dt.datetime(2026, 11, 26, 10, 0, 5, tzinfo=dt.UTC)
    env.deliveries.rows = [
        Row(TXN_A, PUSH, 2, "UNAVAILABLE", at, "waiting"),
        Row(TXN_B, PUSH, 9, "EXPIRED", None, "failed"),
    ]
    env.deliveries.failed = {TXN_B}
    rc, out, _ = await _cli(env, capsys, tmp_path, "deliveries", "list", "--insurer", PUSH)
    assert rc == 0 and list(out) == ["deliveries"]
    assert out["deliveries"] == [
        {
            "transaction_id": TXN_A,
            "insurer_code": PUSH,
            "attempts": 2,
            "last_error": "UNAVAILABLE",
            "next_attempt_at": "2026-11-26T10:00:05Z",
            "state": "waiting",
        },
        {
            "transaction_id": TXN_B,
            "insurer_code": PUSH,
            "attempts": 9,
            "last_error": "EXPIRED",
            "next_attempt_at": None,
            "state": "failed",
        },
    ]
    rc, out, _ = await _cli(env, capsys, tmp_path, "deliveries", "list", "--state", "failed", "--limit", "5")
    assert rc == 0 and [d["transaction_id"] for d in out["deliveries"]] == [TXN_B]
    assert env.deliveries.list_calls[-1] == ("", "failed", 5)
    rc, out, _ = await _cli(env, capsys, tmp_path, "deliveries", "redrive", TXN_A, TXN_B)
    assert rc == 0 and out == {"redriven": [TXN_B]}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["insurer", "add", "NEWCO", "--name", "N", "--line", "life", "--delivery", "webhook"]
            + ["--endpoint", "http://newco.example/claims", "--encryption-jwk", "{public}"],
            "error: INVALID_ARGUMENT ENDPOINT_INVALID: ",
        ),
        (
            ["insurer", "add", "NEWCO", "--name", "N", "--line", "life", "--delivery", "grpc"]
            + ["--endpoint", "newco.example", "--encryption-jwk", "{public}"],
            "error: INVALID_ARGUMENT ENDPOINT_INVALID: ",
        ),
        (["insurer", "set", "NOSUCH", "--available", "true"], "error: NOT_FOUND UNKNOWN_PRINCIPAL: "),
        (["insurer", "rotate-endpoint-key", "NOSUCH"], "error: NOT_FOUND UNKNOWN_PRINCIPAL: "),
        (["insurer", "rotate-endpoint-key", PULL], "error: FAILED_PRECONDITION DELIVERY_NOT_PUSH: "),
        (["deliveries", "redrive", "txn_nope"], "error: INVALID_ARGUMENT TRANSACTION_ID_INVALID: "),
        (
            ["hospital", "add", "10670", "--name", "Again", "--encryption-jwk", "{public}"],
            "error: ALREADY_EXISTS PRINCIPAL_EXISTS: ",
        ),
    ],
    ids=[
        "http_webhook",
        "grpc_no_port",
        "set_unknown",
        "rotate_unknown",
        "rotate_pull",
        "redrive_bad",
        "exists",
    ],
)
async def test_refusals_print_code_and_reason_and_change_nothing(
    env: AdminEnv,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    files: dict[str, Path],
    argv: list[str],
    expected: str,
) -> None:
    before = await env.snapshot()
    argv = [a.format(public=files["public"]) for a in argv]
    rc, out, err = await _cli(env, capsys, tmp_path, *argv)
    assert (rc, out) == (1, None) and err.startswith(expected) and err.count("\n") == 1
    assert await env.snapshot() == before


async def test_wrong_token_is_refused_and_never_printed(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    wrong = "wrong-" + TOKEN
    rc, out, err = await _cli(env, capsys, tmp_path, "insurer", "rotate-endpoint-key", PUSH, token=wrong)
    assert (rc, out) == (1, None) and err.startswith("error: UNAUTHENTICATED ADMIN_TOKEN_INVALID: ")
    assert wrong not in err and TOKEN not in err


async def test_nothing_listening_is_unavailable(
    env: AdminEnv, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "admin.json"
    cfg.write_text(json.dumps({"target": "127.0.0.1:1", "token": TOKEN}))
    args = build_parser().parse_args(["admin", "deliveries", "list", "--admin-config", str(cfg)])
    assert await admin_cli.run_async(args, env={}) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE ")


# --- the real `iclaim` command ------------------------------------------------------------
async def _iclaim(cwd: Path, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "iclaim.cli",
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_iclaim_admin_reads_the_dev_config_and_env_overrides_it(
    env: AdminEnv, tmp_path: Path, files: dict[str, Path]
) -> None:
    repo = Path(__file__).resolve().parents[2]
    base = {k: v for k, v in os.environ.items() if not k.startswith("ICLAIM_ADMIN_")}
    base["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "sdk"), base.get("PYTHONPATH", "")])
    dev = tmp_path / ".iclaim" / "dev"
    dev.mkdir(parents=True)
    env.admin_config(dev)  # where `make run` writes it; no flag needed

    rc, out, err = await _iclaim(
        tmp_path,
        base,
        "admin",
        "hospital",
        "add",
        "11003",
        "--name",
        "Korat Demo",
        "--encryption-jwk",
        str(files["public"]),
    )
    assert rc == 0, err
    assert set(json.loads(out)) == {"code", "key_id", "secret"}

    # The environment wins over the file: a wrong token there is refused.
    rc, out, err = await _iclaim(
        tmp_path, {**base, "ICLAIM_ADMIN_TOKEN": "x" * 40}, "admin", "insurer", "rotate-endpoint-key", PUSH
    )
    assert (rc, out) == (1, "") and err.startswith("error: UNAUTHENTICATED ADMIN_TOKEN_INVALID: ")
