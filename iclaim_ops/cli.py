"""Operator commands the hub adds to `iclaim` (entry point group `iclaim.cli`)."""

from __future__ import annotations

import argparse

from iclaim.cli_groups import CommandGroups
from iclaim_ops import admin_cli, audit_cli, billing_cli


def _up(args: argparse.Namespace) -> int:
    from iclaim_ops.devstack.up import run_up

    return run_up(demo=not args.no_demo)


def register(groups: CommandGroups) -> None:
    up = groups.root.add_parser("up", help="run the whole clearinghouse in the foreground")
    up.add_argument("--no-demo", action="store_true", help="skip the demo claims")
    up.set_defaults(func=_up)
    audit_cli.register(groups)
    billing_cli.register(groups)
    admin_cli.register(groups)
