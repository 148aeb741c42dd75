"""The `iclaim` command's parser, shared with plugins.

The participant SDK registers its commands; an installed hub adds the
operator commands (`up`, `audit verify`, `billing reconcile`, `admin` …) through
the `iclaim.cli` entry-point group, so one `iclaim` command serves both."""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Any

PLUGIN_GROUP = "iclaim.cli"


class CommandGroups:
    """Top-level subcommands, and groups (`audit`, `billing`) that more than
    one distribution adds subcommands to."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self._groups: dict[str, Any] = {}

    def group(self, name: str, help_text: str) -> Any:
        if name not in self._groups:
            parser: argparse.ArgumentParser = self.root.add_parser(name, help=help_text)
            self._groups[name] = parser.add_subparsers(dest=f"{name}_command", required=True)
        return self._groups[name]


def load_plugins(groups: CommandGroups) -> None:
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()(groups)
