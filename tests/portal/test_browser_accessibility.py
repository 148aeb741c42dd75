"""axe-core on every page of both portals: no serious or critical violation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.portal.browser import sign_in
from tests.portal.support import RunningPortal
from tests.portal.test_browser_hospital import LIVE_TIMEOUT_MS, fill_claim, submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AXE = Path(__file__).parent / "vendor" / "axe.min.js"


async def serious_violations(page: Page) -> list[str]:
    # evaluated over the DevTools protocol: the portal's CSP rightly refuses an injected <script>
    await page.evaluate(AXE.read_text())
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{page.url}: {v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def check(page: Page, url: str) -> list[str]:
    await page.goto(url)
    return await serious_violations(page)


async def test_every_page_passes_axe(
    page: Page, second_page: Page, hospital_portal: RunningPortal, insurer_portal: RunningPortal
) -> None:
    found = await check(page, hospital_portal.url + "/signin")
    await sign_in(page, hospital_portal)
    await fill_claim(page, hospital_portal, "POL-A11Y", "100", insurer="TESTPULL")
    await submit(page)
    await expect(page.locator("#claim-state")).to_have_text("รอพิจารณา", timeout=LIVE_TIMEOUT_MS)
    claim_url = page.url
    found += await serious_violations(page)
    hospital_code = hospital_portal.config.credentials.code
    for path in (
        "/claims",
        "/claims?state=APPROVED",
        "/claims/new",
        "/invoices?counterparty=TESTPULL",
        "/statement?counterparty=TESTPULL",
        "/reports",
        "/actions",
        "/passkeys",
    ):
        found += await check(page, hospital_portal.url + path)
    # a form sent back with an error message
    await fill_claim(page, hospital_portal, "POL-A11Y", "-1")
    await submit(page)
    found += await serious_violations(page)
    await page.goto(claim_url)

    claim_ref = await page.locator("h1").inner_text()

    await sign_in(second_page, insurer_portal)
    found += await serious_violations(second_page)
    await second_page.get_by_role("link", name=claim_ref.split()[-1]).click()
    found += await serious_violations(second_page)
    await second_page.get_by_role("button", name="ส่งผลการตัดสิน").click()  # no outcome chosen
    found += await serious_violations(second_page)
    await second_page.get_by_label("อนุมัติเต็มจำนวน").check()
    await second_page.get_by_role("button", name="ส่งผลการตัดสิน").click()
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติ", timeout=LIVE_TIMEOUT_MS)
    found += await serious_violations(page)  # the decided claim, opened

    await page.goto(f"{hospital_portal.url}/invoices?counterparty=TESTPULL")
    found += await serious_violations(page)
    await page.get_by_role("button", name="สร้างใบแจ้งหนี้").click()
    found += await serious_violations(page)
    await second_page.goto(f"{insurer_portal.url}/invoices?counterparty={hospital_code}")
    found += await serious_violations(second_page)
    await second_page.get_by_role("link", name=re.compile("^ชำระเงิน ")).first.click()
    found += await serious_violations(second_page)
    for path in (f"/statement?counterparty={hospital_code}", "/reports", "/actions", "/staff", "/passkeys"):
        found += await check(second_page, insurer_portal.url + path)
    await page.get_by_role("link", name="English").click()
    found += await check(page, hospital_portal.url + "/claims")
    await page.get_by_role("link", name="ภาษาไทย").click()
    assert found == []


async def test_the_check_itself_finds_a_violation(page: Page, hospital_portal: RunningPortal) -> None:
    """A control: an unlabelled input and an image without alt text are critical."""
    await page.goto(hospital_portal.url + "/signin")
    await page.evaluate(
        "document.querySelector('main').insertAdjacentHTML('beforeend', '<img src=\"/x.png\"><input>')"
    )
    assert len(await serious_violations(page)) >= 2
