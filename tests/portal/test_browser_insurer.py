"""A claim from the hospital portal decided by a person in the TESTPULL portal,
then billed: invoice → acknowledge → payment → statement (real stack, real
browser, two people with their own sessions)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.portal.browser import invoice_refs, new_invoice_ref, sign_in
from tests.portal.support import RunningPortal
from tests.portal.test_browser_hospital import LIVE_TIMEOUT_MS, fill_claim, submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PULL = "TESTPULL"


async def submitted_to_pull(page: Page, hospital: RunningPortal, policy: str, amount: str) -> str:
    await fill_claim(page, hospital, policy, amount, insurer=PULL)
    claim_ref = await page.get_by_label("เลขอ้างอิงเคลม").input_value()
    await submit(page)
    # the TESTPULL portal's puller took it and marked it for review
    await expect(page.locator("#claim-state")).to_have_text("รอพิจารณา", timeout=LIVE_TIMEOUT_MS)
    await page.evaluate("window.__same_page = true")
    return claim_ref


async def report_totals(viewer: Page, portal: RunningPortal, counterparty: str) -> dict[str, int]:
    """The report's CSV for one counterparty, summed over its months (other tests'
    claims are in it too: compare before and after)."""
    resp = await viewer.request.get(f"{portal.url}/reports?counterparty={counterparty}&format=csv")
    assert resp.ok, resp.status
    totals = dict.fromkeys(
        ("claims", "partially_approved", "approved_satang", "paid_satang", "outstanding_satang"), 0
    )
    for row in csv.DictReader(io.StringIO(await resp.text())):
        if row["counterparty"] == counterparty:
            for key in totals:
                totals[key] += int(row[key])
    return totals


async def open_in_queue(reviewer: Page, insurer: RunningPortal, claim_ref: str) -> None:
    await sign_in(reviewer, insurer)
    await reviewer.get_by_role("link", name=claim_ref).click()
    await expect(reviewer.get_by_role("heading", name=f"พิจารณา {claim_ref}")).to_be_visible()


async def test_claim_decided_in_part_by_the_insurer_portal_then_billed_and_paid(
    page: Page, second_page: Page, hospital_portal: RunningPortal, insurer_portal: RunningPortal
) -> None:
    reviewer = second_page
    hospital_code = hospital_portal.config.credentials.code
    await sign_in(page, hospital_portal)
    reported = {"hospital": await report_totals(page, hospital_portal, PULL)}
    claim_ref = await submitted_to_pull(page, hospital_portal, "POL-PORTAL-1", "1000")

    await open_in_queue(reviewer, insurer_portal, claim_ref)
    # pending in the insurer's queue: it owes nothing yet
    reported["insurer"] = await report_totals(reviewer, insurer_portal, hospital_code)
    await expect(reviewer.locator("#policy")).to_have_text("POL-PORTAL-1")  # opened with TESTPULL's key
    await expect(reviewer.locator("#billed")).to_have_text("฿1,000.00")
    await reviewer.get_by_label("อนุมัติบางส่วน", exact=True).check()
    await reviewer.get_by_label("ยอดอนุมัติ (บาท)").fill("1000")  # not less than billed
    await reviewer.get_by_role("button", name="ส่งผลการตัดสิน").click()
    await expect(reviewer.get_by_role("alert")).to_have_text("การอนุมัติบางส่วนต้องมากกว่าศูนย์และน้อยกว่ายอดเรียกเก็บ")
    await reviewer.get_by_label("ยอดอนุมัติ (บาท)").fill("600")
    await reviewer.get_by_label("เหตุผลที่อนุมัติบางส่วน").select_option("COVERAGE_LIMIT_REACHED")
    await reviewer.get_by_role("button", name="ส่งผลการตัดสิน").click()
    await expect(reviewer.get_by_role("table", name="ตัดสินล่าสุด")).to_contain_text(claim_ref)

    # the hospital's page, never reloaded, shows the decision
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติบางส่วน", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#claim-approved")).to_have_text("฿600.00")
    await expect(page.locator("#claim-reason")).to_have_text("COVERAGE_LIMIT_REACHED")
    assert await page.evaluate("window.__same_page === true")

    # invoice
    await page.goto(f"{hospital_portal.url}/invoices?counterparty={PULL}")
    invoices = page.get_by_role("table", name=re.compile("ใบแจ้งหนี้"))
    before = set(await invoice_refs(page))
    for box in await page.get_by_role("checkbox").all():  # only this test's claim
        await box.set_checked(False)
    await page.get_by_label(re.compile(re.escape(claim_ref))).check()
    await page.get_by_role("button", name="สร้างใบแจ้งหนี้").click()
    await expect(page.get_by_label(re.compile(re.escape(claim_ref)))).to_have_count(0)
    invoice_ref = await new_invoice_ref(page, before)
    row = invoices.get_by_role("row", name=re.compile(re.escape(invoice_ref)))
    await expect(row).to_contain_text("ส่งแล้ว")
    await expect(row).to_contain_text("฿600.00")

    # acknowledge and pay
    await reviewer.goto(f"{insurer_portal.url}/invoices?counterparty={hospital_code}")
    await reviewer.get_by_role("button", name=f"รับทราบ {invoice_ref}").click()
    reviewer_row = reviewer.get_by_role("row", name=re.compile(re.escape(invoice_ref)))
    await expect(reviewer_row).to_contain_text("รับทราบแล้ว")
    await reviewer.get_by_role("link", name=f"ชำระเงิน {invoice_ref}").click()
    await reviewer.get_by_label(re.compile(f"^ชำระ \\(บาท\\) {re.escape(claim_ref)}")).fill("-5")
    await reviewer.get_by_role("button", name="บันทึกการชำระเงิน").click()
    await expect(reviewer.get_by_role("alert")).to_have_text("กรุณากรอกจำนวนเงินเป็นบาท (ห้ามติดลบ)")
    # the form shows what is still due on the claim; 500 paid and a 100 contractual adjustment settle it
    await expect(reviewer.locator("td[data-due]")).to_have_text("฿600.00")
    await reviewer.get_by_label(re.compile(f"^ชำระ \\(บาท\\) {re.escape(claim_ref)}")).fill("500")
    await reviewer.get_by_label(f"กลุ่มการปรับยอด {claim_ref}").select_option("CO")
    await reviewer.get_by_label(f"เหตุผลการปรับยอด {claim_ref}").fill("45")
    await reviewer.get_by_label(f"ยอดปรับ (บาท) {claim_ref}").fill("100")
    await reviewer.get_by_role("button", name="บันทึกการชำระเงิน").click()
    await expect(reviewer_row).to_contain_text("ชำระครบ")

    # statement, and its CSV
    await page.goto(f"{hospital_portal.url}/statement?counterparty={PULL}")
    statement = page.get_by_role("table", name=re.compile("รายงานสรุปบัญชี"))
    await expect(statement).to_contain_text("ชำระเงิน")
    await expect(statement).to_contain_text("-฿500.00")
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="ดาวน์โหลด CSV").click()
    download = await download_info.value
    csv_text = Path(await download.path()).read_text(encoding="utf-8")
    assert re.search(r"^.*,PAYMENT,.*,-50000,-500\.00,", csv_text, re.M), csv_text
    assert re.search(r"^.*,ADJUSTMENT,.*,-10000,-100\.00,", csv_text, re.M), csv_text

    # reports on both sides count it as approved in part, paid 500 (money received) and owing nothing
    for viewer, portal, counterparty in (
        (page, hospital_portal, PULL),
        (reviewer, insurer_portal, hospital_code),
    ):
        await viewer.goto(f"{portal.url}/reports?counterparty={counterparty}")
        await expect(viewer.get_by_role("img", name="จำนวนเคลมตามผลการพิจารณารายเดือน")).to_be_visible()
        await expect(viewer.get_by_role("img", name="ยอดเงินรายเดือน")).to_be_visible()
        await expect(viewer.get_by_role("row", name=re.compile(f" {counterparty} ")).first).to_be_visible()
    for side, viewer, portal, counterparty in (
        ("hospital", page, hospital_portal, PULL),
        ("insurer", reviewer, insurer_portal, hospital_code),
    ):
        after = await report_totals(viewer, portal, counterparty)
        change = {k: after[k] - reported[side][k] for k in after}
        assert change == {
            "claims": 0 if side == "insurer" else 1,  # the insurer's queue had it already
            "partially_approved": 1,
            "approved_satang": 60_000,
            "paid_satang": 50_000,  # money received, not the 600 approved
            "outstanding_satang": 0,  # 500 paid + 100 CO adjustment settle it
        }, (side, change)


async def test_claim_appears_in_the_open_queue_and_is_denied_with_a_reason(
    page: Page, second_page: Page, hospital_portal: RunningPortal, insurer_portal: RunningPortal
) -> None:
    await sign_in(second_page, insurer_portal)  # the reviewer's queue is open before the claim comes
    await second_page.evaluate("window.__same_page = true")
    await sign_in(page, hospital_portal)
    claim_ref = await submitted_to_pull(page, hospital_portal, "POL-PORTAL-2", "250.50")
    arrived = second_page.get_by_role("link", name=claim_ref)
    await expect(arrived).to_be_visible(timeout=LIVE_TIMEOUT_MS)  # htmx refreshed the list
    assert await second_page.evaluate("window.__same_page === true")
    await arrived.click()
    await second_page.get_by_label("ปฏิเสธ", exact=True).check()
    await second_page.get_by_label("เหตุผลที่ปฏิเสธ").select_option("POLICY_LAPSED")
    await second_page.get_by_role("button", name="ส่งผลการตัดสิน").click()
    await expect(page.locator("#claim-state")).to_have_text("ปฏิเสธ", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#claim-reason")).to_have_text("POLICY_LAPSED")
