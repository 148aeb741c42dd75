"""`iclaim insurer serve`: run the insurer kit (docs/protocol.md §10) for the
insurers in a credentials file, by gRPC push, HTTPS webhook, or pull."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from iclaim.cli_groups import CommandGroups

DEFAULT_STATE_DIR = Path(".iclaim/insurer")
HANDLER_HELP = (
    "your decision code as MODULE:ATTR (the current directory is importable): an object with "
    "`async def decide(claim) -> Decision`, a class or factory making one, or an async function "
    "decide(claim). Default: approve every readable claim in full."
)


def register(groups: CommandGroups) -> None:
    serve = groups.group("insurer", "run an insurer endpoint (the insurer kit)").add_parser(
        "serve",
        help="receive claims (gRPC push, webhook or pull), decide them, post decisions",
        description=(
            "Receives claims for the insurers in the credentials file, verifies pushes (§10.1), "
            "stores each once in a local inbox (--state-dir), opens it, asks the handler, and "
            "posts the decision through the gateway. Without --handler every readable claim is "
            "APPROVED in full; unreadable ones are DENIED with INVALID_CLAIM_DOCUMENT."
        ),
    )
    serve.add_argument(
        "--credentials",
        dest="insurer_credentials",
        type=Path,
        required=True,
        metavar="FILE",
        help="insurer credentials JSON (format: iclaim.insurer.credentials)",
    )
    serve.add_argument("--code", default=None, help="serve only this insurer of the file (default: all)")
    mode = serve.add_mutually_exclusive_group(required=True)
    mode.add_argument("--grpc", metavar="HOST:PORT", help="serve iclaim.v1.InsurerEndpoint over TLS here")
    mode.add_argument(
        "--webhook",
        metavar="HOST:PORT",
        help="serve POST /insurers/<CODE>/claims (and /iclaim/claims) over HTTPS",
    )
    mode.add_argument("--pull", action="store_true", help="long-poll PullClaims through the gateway")
    serve.add_argument("--handler", metavar="MODULE:ATTR", default=None, help=HANDLER_HELP)
    serve.add_argument(
        "--answer-in-push",
        action="store_true",
        help="push modes: answer a push with the handler's decision when it is final at once"
        " (§10.6: no PostDecision call); for handlers that decide within a second or two",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where the inbox lives (default: {DEFAULT_STATE_DIR})",
    )
    serve.set_defaults(func=_serve)


def load_handler(spec: str | None) -> Any:
    """MODULE:ATTR -> a ClaimHandler (see HANDLER_HELP)."""
    from iclaim.insurer.handler import ApproveInFull, FunctionHandler

    if spec is None:
        return ApproveInFull()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("--handler must be MODULE:ATTR")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if hasattr(obj, "decide") and not isinstance(obj, type):
        return obj
    if asyncio.iscoroutinefunction(obj):
        return FunctionHandler(obj)
    if callable(obj):
        made = obj()
        if hasattr(made, "decide"):
            return made
    raise ValueError(f"{spec} is not a claim handler (needs async decide(claim) -> Decision)")


def _serve(args: argparse.Namespace) -> int:
    from iclaim.insurer.credentials import CredentialsError, load_all_insurer_credentials, select

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        insurers = load_all_insurer_credentials(args.insurer_credentials)
        if args.code:
            insurers = [select(insurers, args.code)]
        handler = load_handler(args.handler)
    except (CredentialsError, ValueError, ImportError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve_async(args, insurers, handler))


async def _serve_async(args: argparse.Namespace, insurers: list[Any], handler: Any) -> int:
    from iclaim.insurer.credentials import CredentialsError
    from iclaim.insurer.runner import Running, ServePlan, serve

    if args.grpc:
        plan = ServePlan(grpc=insurers, grpc_addr=args.grpc)
    elif args.webhook:
        plan = ServePlan(webhook=insurers, webhook_addr=args.webhook)
    else:
        plan = ServePlan(pull=insurers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    codes = ",".join(i.code for i in insurers)

    def ready(running: Running) -> None:
        where = (
            f"gRPC on port {running.grpc_port}"
            if running.grpc_port
            else f"webhook on port {running.webhook_port}"
            if running.webhook_port
            else "pull"
        )
        print(f"serving {codes} by {where}; state in {args.state_dir}", file=sys.stderr, flush=True)

    try:
        options = {"worker_options": {"answer_in_push": args.answer_in_push}}
        await serve(plan, handler, args.state_dir, stop, on_ready=ready, host_options=options)
    except (CredentialsError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
