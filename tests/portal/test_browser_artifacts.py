"""The browser tests' failure artifacts: a small suite run in a pytest of its own
with tests/portal/conftest.py's browser configuration keeps a screenshot and a
trace of the test that failed, and nothing of the one that passed."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# The settings the inner run shares with this one (its pytest.ini, from our own).
SHARED_INI = (
    "asyncio_mode",
    "asyncio_default_fixture_loop_scope",
    "asyncio_default_test_loop_scope",
    "timeout",
)

CONFTEST = """
from tests.portal.conftest import browser_context_args, browser_type_launch_args, pytest_configure
"""

SUITE = """
from playwright.async_api import Page


async def test_passes(page: Page) -> None:
    await page.set_content("<h1>ผ่าน</h1>")
    assert await page.evaluate("navigator.language") == "th-TH"
    assert await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == "Asia/Bangkok"


async def test_fails(page: Page) -> None:
    await page.set_content("<h1>ไม่ผ่าน</h1>")
    assert await page.locator("h1").inner_text() == "ผ่าน", "fails on purpose"
"""


def test_a_failed_browser_test_keeps_a_screenshot_and_a_trace(
    pytester: pytest.Pytester, pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = "\n".join(f"{name} = {pytestconfig.getini(name)}" for name in SHARED_INI)
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_page=SUITE)
    # this checkout's `tests` package (pytest puts it on sys.path here, not in the inner run)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    output = pytester.path / "artifacts"  # not the real one: the plugin empties it at start

    # no --screenshot or --tracing: those come from the conftest's pytest_configure
    result = pytester.runpytest_subprocess("--output", str(output), timeout=240)

    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: fails on purpose*"])
    [kept] = list(output.iterdir())  # nothing of test_passes
    assert kept.name == "test-page-py-test-fails-chromium"
    assert sorted(f.name for f in kept.iterdir()) == ["test-failed-1.png", "trace.zip"]
    assert (kept / "test-failed-1.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with zipfile.ZipFile(kept / "trace.zip") as trace:
        events = [json.loads(line) for line in trace.read("trace.trace").decode().splitlines()]
    assert {"method": "setContent", "html": "<h1>ไม่ผ่าน</h1>"} in [
        {"method": e["method"], "html": e["params"].get("html")} for e in events if e["type"] == "before"
    ]
