"""Vendored front-end files are exactly the pinned releases VENDORED.md records,
and no page loads anything from another origin."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import iclaim_portal

PACKAGE = Path(iclaim_portal.__file__).parent
ROW = re.compile(
    r"^\| `(?P<file>[^`]+)` \| `(?P<pkg>[^`]+)` \(npm\) \| (?P<version>[0-9.]+) \|"
    r".*\| `(?P<sha>[0-9a-f]{64})` \|",
    re.M,
)


TEST_VENDOR = Path(__file__).parent / "vendor"


def _check(directory: Path, expected: list[str], version_marker: str) -> None:
    rows = list(ROW.finditer((directory / "VENDORED.md").read_text()))
    assert [r["file"] for r in rows] == expected
    for row in rows:
        data = (directory / row["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha"], row["file"]
        assert version_marker.format(version=row["version"]) in data.decode()


def test_vendored_files_match_their_recorded_checksums() -> None:
    _check(PACKAGE, ["static/htmx.min.js"], 'version:"{version}"')
    _check(TEST_VENDOR, ["axe.min.js"], "axe v{version}")


def test_templates_load_nothing_from_another_origin() -> None:
    for template in (PACKAGE / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), template.name
