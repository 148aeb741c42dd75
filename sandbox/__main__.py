"""`python -m sandbox --credentials FILE [--grpc HOST:PORT] [--webhook HOST:PORT]
[--health HOST:PORT] [--state-dir DIR]`: the sandbox insurers until SIGTERM/SIGINT.

Timing knobs (§8): ICLAIM_SIM_REVIEW_S (default 2), ICLAIM_SIM_SLOW_S (10).
Runs on uvloop, as the hub's services do; ICLAIM_EVENT_LOOP=asyncio for the
standard loop. Exit status: 0 after a clean stop, 2 for unusable arguments or credentials."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from iclaim.insurer.credentials import CredentialsError
from sandbox.app import Listen, run
from sandbox.config import load_sandbox
from sandbox.policies import Timing, TimingError

_ADDR = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


def _addr(value: str) -> str:
    if value == "":  # not given (argparse also runs defaults through here)
        return value
    if not _ADDR.fullmatch(value) or not 0 <= int(value.rpartition(":")[2]) <= 65535:
        raise argparse.ArgumentTypeError("must be HOST:PORT")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox", description="The sandbox insurers (§8).")
    p.add_argument("--credentials", type=Path, required=True, help="sandbox.json (written by the dev stack)")
    p.add_argument("--grpc", type=_addr, default="", help="listen address for the gRPC-push insurers")
    p.add_argument("--webhook", type=_addr, default="", help="listen address for the webhook insurers")
    p.add_argument("--health", type=_addr, default="", help="plaintext grpc.health.v1 address")
    p.add_argument("--state-dir", type=Path, default=Path(".iclaim/dev/sandbox"), help="the kit's inbox")
    p.add_argument(
        "--post-decisions",
        action="store_true",
        help="push insurers post every decision (PostDecision) instead of answering the push with it (§10.6)",
    )
    return p


async def _main(args: argparse.Namespace) -> int:
    try:
        insurers = load_sandbox(args.credentials)
        timing = Timing.from_env(os.environ)
    except (CredentialsError, TimingError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Modules and credentials last as long as the process: kept out of the
    # collector's full collections, which otherwise stall every claim in flight.
    gc.freeze()
    try:
        listen = Listen(args.grpc, args.webhook, args.health)
        await run(insurers, listen, args.state_dir, timing, stop, answer_in_push=not args.post_decisions)
    except (CredentialsError, ValueError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    return 0


LOOPS = ("UVLOOP", "ASYNCIO")


def chosen_loop(environ: Mapping[str, str] = os.environ) -> str:
    """UVLOOP (default) or ASYNCIO, from ICLAIM_EVENT_LOOP as the hub reads it
    (iclaim_hub/common/event_loop.py; the sandbox imports nothing of the hub).
    uvloop halves the CPU of each handoff to the inbox's thread."""
    value = (environ.get("ICLAIM_EVENT_LOOP") or "uvloop").upper()
    if value not in LOOPS:
        raise ValueError(f"ICLAIM_EVENT_LOOP must be one of {', '.join(LOOPS)}, got {value!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        loop = chosen_loop()
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    level = os.environ.get("ICLAIM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "INFO",
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if loop == "UVLOOP":
        import uvloop

        return uvloop.run(_main(args))
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
