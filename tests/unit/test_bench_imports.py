"""Every module of `make bench` and `make soak` imports: nothing in CI runs the
bench, and the soak test only finds a broken import after the full suite's
first ten minutes (a renamed helper in iclaim_ops did exactly that)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import bench

MODULES = sorted(m.name for m in pkgutil.walk_packages([str(Path(bench.__file__).parent)], "bench."))


def test_the_bench_has_modules() -> None:
    assert {"bench.__main__", "bench.load", "bench.soak.infra", "bench.soak.__main__"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name: str) -> None:
    importlib.import_module(name)
