"""Chromium from the OS packages, driven by Playwright through its asyncio pytest
plugin (pytest-playwright-asyncio; the browser download host is not reachable, so the
OS browser is the executable): the launch and context settings and the artifacts
directory that tests/portal/conftest.py gives the plugin, and helpers (sign-in, invoices)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from tests.portal.support import ADMIN, RunningPortal

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Every context: Thai pages in Bangkok time.
CONTEXT: dict[str, Any] = {"locale": "th-TH", "timezone_id": "Asia/Bangkok"}
# A failed browser test's screenshots and trace (the plugin's --output).
ARTIFACTS = Path(__file__).resolve().parents[2] / ".iclaim" / "test-artifacts" / "portal"


LANDING_HEADINGS = {"hospital": "เคลม", "insurer": "งานรอพิจารณา"}


async def sign_in(page: Page, portal: RunningPortal) -> None:
    """Password sign-in through the Thai form, by its labels."""
    await page.goto(portal.url + "/signin")
    await page.get_by_label("ชื่อผู้ใช้").fill(ADMIN)
    await page.get_by_label("รหัสผ่าน").fill(portal.password)
    await page.get_by_role("button", name="เข้าสู่ระบบ", exact=True).click()
    heading = LANDING_HEADINGS[portal.config.side]
    await expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()


async def invoice_refs(page: Page) -> list[str]:
    """The invoice refs in the page's invoice table (first column)."""
    table = page.get_by_role("table", name=re.compile("ใบแจ้งหนี้"))
    if not await table.count():
        return []
    return [t.strip() for t in await table.locator("tbody tr td:first-child").all_inner_texts()]


async def new_invoice_ref(page: Page, before: set[str]) -> str:
    """The one invoice that appeared since `before`, once the page that follows
    "create invoice" is in place (the form's checkbox goes as the old page is
    replaced, before the new table is there)."""
    for _ in range(100):
        await page.wait_for_load_state()
        new = set(await invoice_refs(page)) - before
        if new:
            [ref] = new
            return ref
        await asyncio.sleep(0.05)
    raise AssertionError("no new invoice on the page")
