"""Chromium from the OS packages, driven by Playwright (the browser download host
is not reachable; the OS browser is the executable). Failed tests keep a
screenshot and a trace under .iclaim/test-artifacts/portal/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

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
ARTIFACTS = Path(__file__).resolve().parents[2] / ".iclaim" / "test-artifacts" / "portal"


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def traced_page(
    browser: Browser, name: str, failed: list[bool]
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    """A fresh context (own cookies); on failure (failed[0] set by the caller's
    fixture after the test) its screenshot and trace are written to ARTIFACTS."""
    context = await browser.new_context(locale="th-TH", timezone_id="Asia/Bangkok")
    await context.tracing.start(screenshots=True, snapshots=True)
    page = await context.new_page()
    try:
        yield context, page
    finally:
        if failed and failed[0]:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            await page.screenshot(path=str(ARTIFACTS / f"{safe}.png"), full_page=True)
            await context.tracing.stop(path=str(ARTIFACTS / f"{safe}-trace.zip"))
        else:
            await context.tracing.stop()
        await context.close()


LANDING_HEADINGS = {"hospital": "เคลม", "insurer": "งานรอพิจารณา"}


async def sign_in(page: Page, portal: RunningPortal) -> None:
    """Password sign-in through the Thai form, by its labels."""
    await page.goto(portal.url + "/signin")
    await page.get_by_label("ชื่อผู้ใช้").fill(ADMIN)
    await page.get_by_label("รหัสผ่าน").fill(portal.password)
    await page.get_by_role("button", name="เข้าสู่ระบบ", exact=True).click()
    heading = LANDING_HEADINGS[portal.config.side]
    await expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
