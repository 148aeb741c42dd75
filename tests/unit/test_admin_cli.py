"""`iclaim admin` without a server: the §11 command lines parse, where the
target and token come from, input refused before any call, and how a refused
call is printed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from iclaim.cli import build_parser
from iclaim.crypto.envelope import generate_encryption_key
from iclaim.errors import NotFound
from iclaim_ops import admin_cli

TXN = "txn_" + "c" * 28


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.fixture
def jwks(tmp_path: Path) -> dict[str, Path]:
    private, public = generate_encryption_key("NEWCO-enc-1")
    files = {
        "public": public,
        "private": private,
        "no_kid": {k: v for k, v in public.items() if k != "kid"},
        "two": [public, public],
    }
    out = {}
    for name, body in files.items():
        out[name] = tmp_path / f"{name}.jwk"
        out[name].write_text(json.dumps(body))
    out["not_utf8"] = tmp_path / "bin.jwk"
    out["not_utf8"].write_bytes(b"\xff\xfe{")
    out["huge"] = tmp_path / "huge.jwk"
    out["huge"].write_text(" " * (admin_cli.MAX_INPUT_FILE_BYTES + 1))
    return out


class NoNetwork:
    """Stands in for grpc.aio.insecure_channel: any call through it fails the test."""

    def __init__(self) -> None:
        self.opened = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        raise AssertionError("a channel was opened")


# --- the §11 table parses ------------------------------------------------------------
def test_every_section_11_command_line_parses(tmp_path: Path) -> None:
    jwk, ca = str(tmp_path / "k.jwk"), str(tmp_path / "ca.pem")
    lines = {
        "insurer add": ["admin", "insurer", "add", "NEWCO", "--name", "New Co", "--line", "non-life"]
        + ["--delivery", "webhook", "--endpoint", "https://x.example/c", "--ca", ca]
        + ["--encryption-jwk", jwk, "--mtls"],
        "insurer set": ["admin", "insurer", "set", "NEWCO", "--available", "false"]
        + ["--endpoint", "x.example:443", "--ca", ca, "--delivery", "grpc", "--mtls", "true"],
        "insurer rotate-endpoint-key": ["admin", "insurer", "rotate-endpoint-key", "NEWCO"],
        "hospital add": ["admin", "hospital", "add", "11002", "--name", "Udon", "--encryption-jwk", jwk],
        "deliveries list": ["admin", "deliveries", "list", "--insurer", "NEWCO", "--state", "failed"],
        "deliveries redrive": ["admin", "deliveries", "redrive", TXN, TXN],
    }
    assert set(lines) == set(admin_cli.COMMANDS)
    for command, argv in lines.items():
        args = _parse(argv)
        assert args.admin_command == command and args.func is admin_cli.run_command
        assert args.admin_config == admin_cli.DEFAULT_ADMIN_CONFIG
    args = _parse(lines["insurer set"])
    assert (args.available, args.mtls, args.delivery) == (False, True, "grpc")
    unset = _parse(["admin", "insurer", "set", "NEWCO"])
    assert (unset.available, unset.endpoint, unset.ca, unset.delivery, unset.mtls) == (None,) * 5


@pytest.mark.parametrize(
    "argv",
    [
        [
            "admin",
            "insurer",
            "add",
            "X",
            "--name",
            "n",
            "--line",
            "health",
            "--delivery",
            "pull",
            "--encryption-jwk",
            "k",
        ],
        [
            "admin",
            "insurer",
            "add",
            "X",
            "--name",
            "n",
            "--line",
            "life",
            "--delivery",
            "fax",
            "--encryption-jwk",
            "k",
        ],
        ["admin", "insurer", "add", "X", "--name", "n", "--line", "life", "--delivery", "pull"],
        ["admin", "insurer", "set", "X", "--available", "yes"],
        ["admin", "deliveries", "list", "--state", "taken"],
        ["admin", "deliveries", "redrive"],
    ],
    ids=["line", "delivery", "no_jwk", "bool", "state", "no_ids"],
)
def test_malformed_command_lines_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parse(argv)
    assert info.value.code == 2


def test_set_request_carries_only_what_was_named() -> None:
    req = admin_cli._insurer_set(_parse(["admin", "insurer", "set", "NEWCO", "--mtls", "false"]))
    assert req.HasField("endpoint_mtls") and not req.endpoint_mtls
    assert not any(req.HasField(f) for f in ("available", "endpoint", "endpoint_ca_pem", "delivery"))
    req = admin_cli._insurer_set(_parse(["admin", "insurer", "set", "NEWCO", "--ca", ""]))
    assert req.HasField("endpoint_ca_pem") and req.endpoint_ca_pem == ""  # system roots


# --- where and who ---------------------------------------------------------------------
def test_target_and_token_from_the_file_and_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "admin.json"
    cfg.write_text(json.dumps({"target": "10.0.0.1:50061", "token": "file-token"}))
    assert admin_cli.load_target(cfg, {}) == admin_cli.AdminTarget("10.0.0.1:50061", "file-token")
    env = {admin_cli.ENV_TARGET: "adapter:50061"}
    assert admin_cli.load_target(cfg, env) == admin_cli.AdminTarget("adapter:50061", "file-token")
    env[admin_cli.ENV_TOKEN] = "env-token"
    assert admin_cli.load_target(cfg, env) == admin_cli.AdminTarget("adapter:50061", "env-token")
    # Both in the environment: no file needed.
    assert admin_cli.load_target(tmp_path / "absent.json", env).token == "env-token"


@pytest.mark.parametrize(
    ("body", "env", "reason"),
    [
        (None, {}, "ADMIN_CONFIG_MISSING"),
        (None, {admin_cli.ENV_TARGET: "a:1"}, "ADMIN_CONFIG_MISSING"),
        ("{not json", {}, "ADMIN_CONFIG_INVALID"),
        ("[1]", {}, "ADMIN_CONFIG_INVALID"),
        ('{"target": "a:1"}', {}, "ADMIN_CONFIG_MISSING"),
        ('{"target": "a:1", "token": "tok\\nen"}', {}, "ADMIN_CONFIG_INVALID"),
        ('{"target": "a:1", "token": "t"}', {admin_cli.ENV_TOKEN: "t\u0e01"}, "ADMIN_CONFIG_INVALID"),
    ],
    ids=["nothing", "no_token", "not_json", "not_object", "no_token_in_file", "token_newline", "token_thai"],
)
def test_missing_or_bad_config_is_refused(
    tmp_path: Path, body: str | None, env: dict[str, str], reason: str
) -> None:
    cfg = tmp_path / "admin.json"
    if body is not None:
        cfg.write_text(body)
    with pytest.raises(admin_cli.ConfigProblem) as info:
        admin_cli.load_target(cfg, env)
    assert info.value.reason == reason


# --- refused before any call -----------------------------------------------------------
def _add_argv(jwk: Path, *extra: str) -> list[str]:
    return [
        "admin", "insurer", "add", "NEWCO", "--name", "New Co", "--line", "life", "--delivery", "grpc",
        "--endpoint", "x.example:443", "--encryption-jwk", str(jwk), *extra,
    ]  # fmt: skip


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[int, NoNetwork]:
    net = NoNetwork()
    monkeypatch.setattr(admin_cli.grpc.aio, "insecure_channel", net)
    cfg = tmp_path / "admin.json"
    cfg.write_text(json.dumps({"target": "127.0.0.1:1", "token": "t" * 40}))
    args = _parse([*argv, "--admin-config", str(cfg)])
    return admin_cli.run_command(args), net


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [("private", "JWK_PRIVATE"), ("no_kid", "JWK_INVALID"), ("two", "JWK_INVALID"),
     ("not_utf8", "FILE_UNREADABLE"), ("missing", "FILE_UNREADABLE"), ("huge", "FILE_TOO_LARGE")],
)  # fmt: skip
def test_bad_jwk_files_are_refused_before_any_call(
    jwks: dict[str, Path],
    jwk: str,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = jwks.get(jwk, tmp_path / "missing.jwk")
    for argv in (
        _add_argv(path),
        ["admin", "hospital", "add", "11002", "--name", "H", "--encryption-jwk", str(path)],
    ):
        rc, net = _run(argv, monkeypatch, tmp_path)
        out, err = capsys.readouterr()
        assert (rc, out, net.opened) == (1, "", 0)
        assert err.startswith(f"error: INVALID_ARGUMENT {reason}: ") and err.count("\n") == 1


@pytest.mark.parametrize("ca", ["garbage", "missing"])
def test_bad_ca_files_are_refused_before_any_call(
    jwks: dict[str, Path],
    ca: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "ca.pem"
    if ca == "garbage":
        path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    reason = "ENDPOINT_CA_INVALID" if ca == "garbage" else "FILE_UNREADABLE"
    for argv in (
        _add_argv(jwks["public"], "--ca", str(path)),
        ["admin", "insurer", "set", "NEWCO", "--ca", str(path)],
    ):
        rc, net = _run(argv, monkeypatch, tmp_path)
        out, err = capsys.readouterr()
        assert (rc, out, net.opened) == (1, "", 0)
        assert err.startswith(f"error: INVALID_ARGUMENT {reason}: ")


def test_no_config_is_an_error_line_not_a_traceback(
    jwks: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(admin_cli.ENV_TARGET, raising=False)
    monkeypatch.delenv(admin_cli.ENV_TOKEN, raising=False)
    args = _parse(
        ["admin", "insurer", "rotate-endpoint-key", "NEWCO", "--admin-config", str(tmp_path / "none.json")]
    )
    assert admin_cli.run_command(args) == 1
    assert capsys.readouterr().err.startswith("error: FAILED_PRECONDITION ADMIN_CONFIG_MISSING: ")


# --- how a refused call reads ------------------------------------------------------------
class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, Any], ...]) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="refused")


def test_rpc_error_reads_the_error_info_reason() -> None:
    status = rpc_status.to_status(NotFound("no insurer", reason="UNKNOWN_PRINCIPAL").to_status())
    err = FakeRpcError(grpc.StatusCode.NOT_FOUND, tuple(status.trailing_metadata))
    assert admin_cli.rpc_error(err) == ("NOT_FOUND", "UNKNOWN_PRINCIPAL", "refused")
    # No ErrorInfo (e.g. nothing listening): the code stands in for the reason.
    bare = FakeRpcError(grpc.StatusCode.UNAVAILABLE, ())
    assert admin_cli.rpc_error(bare) == ("UNAVAILABLE", "UNAVAILABLE", "refused")
    garbled = FakeRpcError(grpc.StatusCode.INTERNAL, (("grpc-status-details-bin", b"\xff\x00"),))
    assert admin_cli.rpc_error(garbled)[:2] == ("INTERNAL", "INTERNAL")
