"""`iclaim admin …` (docs/protocol.md §11): the registry and the deliveries,
managed through the hub's internal AdminService (never the public gateway).

Each command prints one JSON object on stdout; secrets are base64url. A
refusal prints `error: CODE REASON: message` on stderr and exits 1. Input the
CLI can check itself (files it cannot read, a JWK with private members or no
kid, a CA that is not PEM) is refused before any call.

Where: `--admin-config FILE` (default `.iclaim/dev/admin.json`, written by the
dev stack: {"target": "host:port", "token": "..."}); ICLAIM_ADMIN_TARGET and
ICLAIM_ADMIN_TOKEN override it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from iclaim.cli_groups import CommandGroups
from iclaim.errors import Code, IclaimError, InvalidArgument, error_info_of
from iclaim.limits import CLIENT_OPTIONS
from iclaim_hub.internal.v1 import admin_pb2 as pb
from iclaim_hub.internal.v1 import admin_pb2_grpc
from iclaim_hub.registry.endpoints import check_ca_pem, check_public_jwk

DEFAULT_ADMIN_CONFIG = Path(".iclaim/dev/admin.json")
ENV_TARGET = "ICLAIM_ADMIN_TARGET"
ENV_TOKEN = "ICLAIM_ADMIN_TOKEN"
RPC_TIMEOUT_S = 30.0
# Generous for a PEM bundle or one JWK; anything larger is not what was meant.
MAX_INPUT_FILE_BYTES = 256 * 1024
_STATUS_DETAILS = "grpc-status-details-bin"
_REASON_TRAILER = "x-iclaim-reason"


@dataclass(frozen=True)
class AdminTarget:
    target: str
    token: str


class ConfigProblem(IclaimError):
    code = Code.FAILED_PRECONDITION
    default_reason = "ADMIN_CONFIG_INVALID"


# --- arguments -----------------------------------------------------------------------
def _bool(raw: str) -> bool:
    if raw not in ("true", "false"):
        raise argparse.ArgumentTypeError("must be true or false")
    return raw == "true"


def register(groups: CommandGroups) -> None:
    admin = groups.group("admin", "registry and deliveries (operators; internal admin endpoint)")

    def leaf(sub: Any, group: str, name: str, help_text: str) -> Any:
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--admin-config",
            type=Path,
            default=DEFAULT_ADMIN_CONFIG,
            help=f'{{"target","token"}} JSON (default {DEFAULT_ADMIN_CONFIG});'
            f" {ENV_TARGET}/{ENV_TOKEN} override it",
        )
        p.set_defaults(func=run_command, admin_command=f"{group} {name}")
        return p

    insurer = admin.add_parser("insurer", help="add or change an insurer").add_subparsers(
        dest="admin_insurer_command", required=True
    )
    add = leaf(insurer, "insurer", "add", "enrol an insurer; prints its keys")
    add.add_argument("code", metavar="CODE")
    add.add_argument("--name", required=True)
    add.add_argument("--line", required=True, choices=["life", "non-life"])
    add.add_argument("--delivery", required=True, choices=["pull", "grpc", "webhook"])
    add.add_argument("--endpoint", default="", help="grpc: HOST:PORT; webhook: https:// URL")
    add.add_argument(
        "--ca", type=Path, default=None, help="PEM of the CA for the endpoint (default: system roots)"
    )
    add.add_argument("--encryption-jwk", type=Path, required=True, help="the insurer's PUBLIC JWK (with kid)")
    add.add_argument("--mtls", action="store_true", help="present the hub's client certificate on pushes")

    st = leaf(insurer, "insurer", "set", "change an insurer; prints its registry entry")
    st.add_argument("code", metavar="CODE")
    st.add_argument("--available", type=_bool, default=None, metavar="true|false")
    st.add_argument("--endpoint", default=None)
    st.add_argument("--ca", default=None, help='PEM file; "" for the system roots')
    st.add_argument("--delivery", default=None, choices=["pull", "grpc", "webhook"])
    st.add_argument("--mtls", type=_bool, default=None, metavar="true|false")

    rot = leaf(insurer, "insurer", "rotate-endpoint-key", "new endpoint key; new pushes use it at once")
    rot.add_argument("code", metavar="CODE")

    hospital = admin.add_parser("hospital", help="add a hospital").add_subparsers(
        dest="admin_hospital_command", required=True
    )
    hadd = leaf(hospital, "hospital", "add", "enrol a hospital; prints its signing key")
    hadd.add_argument("code", metavar="CODE")
    hadd.add_argument("--name", required=True)
    hadd.add_argument(
        "--encryption-jwk", type=Path, required=True, help="the hospital's PUBLIC JWK (with kid)"
    )

    deliveries = admin.add_parser("deliveries", help="pushes not yet taken").add_subparsers(
        dest="admin_deliveries_command", required=True
    )
    ls = leaf(deliveries, "deliveries", "list", "deliveries waiting or failed")
    ls.add_argument("--insurer", default="")
    ls.add_argument("--state", default="", choices=["waiting", "failed"])
    ls.add_argument("--limit", type=int, default=0, help="at most this many (default 100, max 1000)")
    red = leaf(deliveries, "deliveries", "redrive", "push FAILED deliveries again")
    red.add_argument("transaction_ids", nargs="+", metavar="TRANSACTION_ID")


# --- where and who -------------------------------------------------------------------
def load_target(config_path: Path, env: Mapping[str, str] | None = None) -> AdminTarget:
    env = os.environ if env is None else env
    target, token = env.get(ENV_TARGET, ""), env.get(ENV_TOKEN, "")
    if not (target and token):
        try:
            raw = config_path.read_text()
        except FileNotFoundError:
            if not (target or token):
                raise ConfigProblem(
                    f"no {config_path} (is `make run` up?) and no {ENV_TARGET}/{ENV_TOKEN}",
                    reason="ADMIN_CONFIG_MISSING",
                ) from None
            raw = "{}"
        except OSError:
            raise ConfigProblem(f"cannot read {config_path}", reason="ADMIN_CONFIG_INVALID") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise ConfigProblem(f"{config_path} is not JSON", reason="ADMIN_CONFIG_INVALID") from None
        if not isinstance(data, dict):
            raise ConfigProblem(f"{config_path} is not a JSON object", reason="ADMIN_CONFIG_INVALID")
        target = target or str(data.get("target") or "")
        token = token or str(data.get("token") or "")
    if not target or not token:
        raise ConfigProblem(
            f"admin target and token are both required ({ENV_TARGET}/{ENV_TOKEN})",
            reason="ADMIN_CONFIG_MISSING",
        )
    if not all("!" <= c <= "~" for c in token):  # metadata can carry only visible ASCII
        raise ConfigProblem("the admin token is not visible ASCII", reason="ADMIN_CONFIG_INVALID")
    return AdminTarget(target, token)


def read_input(path: Path, what: str) -> str:
    """A small UTF-8 file the operator named; refused before any call otherwise."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_INPUT_FILE_BYTES + 1)
    except OSError:
        raise InvalidArgument(f"cannot read the {what} file {path}", reason="FILE_UNREADABLE") from None
    if len(data) > MAX_INPUT_FILE_BYTES:
        raise InvalidArgument(
            f"the {what} file is larger than {MAX_INPUT_FILE_BYTES} bytes", reason="FILE_TOO_LARGE"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"the {what} file is not UTF-8", reason="FILE_UNREADABLE") from None


def read_public_jwk(path: Path) -> str:
    text = read_input(path, "JWK")
    check_public_jwk(text)  # the rules the service applies: one object, a kid, no private members
    return text


def read_ca(path: Path) -> str:
    return check_ca_pem(read_input(path, "CA"))


# --- the commands: prepare (local checks, no call), then one call -------------------
# The typed async stub exists only in the .pyi (what AdminServiceStub(aio channel) returns).
_Stub: TypeAlias = "admin_pb2_grpc.AdminServiceAsyncStub"
_Md: TypeAlias = tuple[tuple[str, str], ...]


def _insurer_add(a: argparse.Namespace) -> pb.AddInsurerRequest:
    return pb.AddInsurerRequest(
        code=a.code,
        display_name=a.name,
        line=a.line,
        delivery=a.delivery,
        endpoint=a.endpoint,
        endpoint_ca_pem=read_ca(a.ca) if a.ca is not None else "",
        encryption_public_jwk=read_public_jwk(a.encryption_jwk),
        endpoint_mtls=a.mtls,
    )


async def _send_insurer_add(stub: _Stub, req: Any, md: _Md) -> dict[str, Any]:
    r = await stub.AddInsurer(req, metadata=md, timeout=RPC_TIMEOUT_S)
    out = {"code": r.code, "key_id": r.key_id, "secret": r.secret}
    if r.endpoint_key_id:  # push modes only (§11)
        out |= {"endpoint_key_id": r.endpoint_key_id, "endpoint_secret": r.endpoint_secret}
    return out


def _insurer_set(a: argparse.Namespace) -> pb.SetInsurerRequest:
    req = pb.SetInsurerRequest(code=a.code)
    if a.available is not None:
        req.available = a.available
    if a.endpoint is not None:
        req.endpoint = a.endpoint
    if a.ca is not None:
        req.endpoint_ca_pem = read_ca(Path(a.ca)) if a.ca else ""
    if a.delivery is not None:
        req.delivery = a.delivery
    if a.mtls is not None:
        req.endpoint_mtls = a.mtls
    return req


async def _send_insurer_set(stub: _Stub, req: Any, md: _Md) -> dict[str, Any]:
    return entry_json(await stub.SetInsurer(req, metadata=md, timeout=RPC_TIMEOUT_S))


def _rotate(a: argparse.Namespace) -> pb.RotateEndpointKeyRequest:
    return pb.RotateEndpointKeyRequest(code=a.code)


async def _send_rotate(stub: _Stub, req: Any, md: _Md) -> dict[str, Any]:
    r = await stub.RotateEndpointKey(req, metadata=md, timeout=RPC_TIMEOUT_S)
    return {"endpoint_key_id": r.endpoint_key_id, "endpoint_secret": r.endpoint_secret}


def _hospital_add(a: argparse.Namespace) -> pb.AddHospitalRequest:
    return pb.AddHospitalRequest(
        code=a.code, display_name=a.name, encryption_public_jwk=read_public_jwk(a.encryption_jwk)
    )


async def _send_hospital_add(stub: _Stub, req: Any, md: _Md) -> dict[str, Any]:
    r = await stub.AddHospital(req, metadata=md, timeout=RPC_TIMEOUT_S)
    return {"code": r.code, "key_id": r.key_id, "secret": r.secret}


def _deliveries_list(a: argparse.Namespace) -> pb.ListDeliveriesRequest:
    return pb.ListDeliveriesRequest(insurer_code=a.insurer, state=a.state, limit=a.limit)


async def _send_deliveries_list(stub: _Stub, req: Any, md: _Md) -> dict[str, Any]:
    r = await stub.ListDeliveries(req, metadata=md, timeout=RPC_TIMEOUT_S)
    return {
        "deliveries": [
            {
                "transaction_id": d.transaction_id,
                "insurer_code": d.insurer_code,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "next_attempt_at": d.next_attempt_at.ToJsonString()
                if d.HasField("next_attempt_at")
                else None,
                "state": d.state,
            }
            for d in r.deliveries
        ]
    }


def _redrive(a: argparse.Namespace) -> pb.RedriveDeliveriesRequest:
    return pb.RedriveDeliveriesRequest(transaction_ids=a.transaction_ids)


async def _send_redrive(stub: _Stub, req: Any, md: _Md) -> dict[str, Any]:
    r = await stub.RedriveDeliveries(req, metadata=md, timeout=RPC_TIMEOUT_S)
    return {"redriven": list(r.redriven)}


@dataclass(frozen=True)
class Command:
    prepare: Callable[[argparse.Namespace], Message]
    send: Callable[[_Stub, Any, _Md], Awaitable[dict[str, Any]]]


COMMANDS = {
    "insurer add": Command(_insurer_add, _send_insurer_add),
    "insurer set": Command(_insurer_set, _send_insurer_set),
    "insurer rotate-endpoint-key": Command(_rotate, _send_rotate),
    "hospital add": Command(_hospital_add, _send_hospital_add),
    "deliveries list": Command(_deliveries_list, _send_deliveries_list),
    "deliveries redrive": Command(_redrive, _send_redrive),
}


def entry_json(e: pb.RegistryEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": e.code,
        "role": e.role,
        "display_name": e.display_name,
        "line": e.line,
        "available": e.available,
        "suspended": e.suspended,
        "delivery": e.delivery,
        "endpoint": e.endpoint,
        "endpoint_ca_set": e.endpoint_ca_set,
        "endpoint_mtls": e.endpoint_mtls,
        "encryption_kids": list(e.encryption_kids),
        "current_kid": e.current_kid,
        "endpoint_key_id": e.endpoint_key_id,
        "health": e.health,
    }
    if e.endpoint_secret:
        out["endpoint_secret"] = e.endpoint_secret
    return out


# --- running one command ------------------------------------------------------------
def rpc_error(exc: grpc.aio.AioRpcError) -> tuple[str, str, str]:
    """(code, reason, message) of a refused call: the ErrorInfo reason when the
    hub sent one, else the reason trailer, else the status code's name."""
    code = exc.code().name
    reason = ""
    for key, value in exc.trailing_metadata() or ():
        if key == _STATUS_DETAILS and isinstance(value, bytes):
            try:
                info = error_info_of(status_pb2.Status.FromString(value))
            except Exception:  # a garbled trailer is only a missing reason
                info = None
            reason = info.reason if info is not None else reason
        elif key == _REASON_TRAILER and isinstance(value, str) and not reason:
            reason = value
    return code, reason or code, exc.details() or ""


async def run_async(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """One command: local checks, then one authenticated call; 0, or 1 with
    `error: CODE REASON: message` on stderr (never the token)."""
    command = COMMANDS[args.admin_command]
    try:
        request = command.prepare(args)
        where = load_target(args.admin_config, env)
        async with grpc.aio.insecure_channel(where.target, options=CLIENT_OPTIONS) as channel:
            stub: _Stub = admin_pb2_grpc.AdminServiceStub(channel)
            result = await command.send(stub, request, (("authorization", f"Bearer {where.token}"),))
    except IclaimError as err:
        print(f"error: {err.code.name} {err.reason}: {err.message}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        code, reason, message = rpc_error(exc)
        print(f"error: {code} {reason}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def run_command(args: argparse.Namespace) -> int:
    return asyncio.run(run_async(args))
