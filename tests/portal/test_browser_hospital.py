"""Issue 12 through a real browser and the real stack (Envoy, services, the
sandbox insurers): a hospital's staff sign in, submit claims in the form and
watch the decision arrive on the page without reloading it; a claim decided
while its page was closed shows its timeline from the hub's audit trail."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
from pathlib import Path

import grpc
import pytest
from playwright.async_api import BrowserContext, Page, expect
from pytest_playwright_asyncio import CreateContextCallback

from iclaim.fhir.claim import synthetic_claim
from iclaim_hub.internal.v1 import audit_log_pb2, audit_log_pb2_grpc

from tests.portal.browser import invoice_refs, new_invoice_ref, sign_in
from tests.portal.support import RunningPortal
from tests.support.stack import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
INSURER = "AIA"
LIVE_TIMEOUT_MS = 30_000


async def fill_claim(
    page: Page, portal: RunningPortal, policy: str, amount: str, insurer: str = INSURER
) -> None:
    await page.goto(portal.url + "/claims/new")
    await page.get_by_label("บริษัทประกัน").select_option(insurer)
    await page.get_by_label("เลขกรมธรรม์").fill(policy)
    await page.get_by_label("ชื่อผู้ป่วย").fill("ผู้ป่วย ทดสอบ")
    await page.get_by_label("เลขประจำตัวประชาชน (13 หลัก)").fill("1101700203451")
    await page.get_by_label("การวินิจฉัย (ICD-10)").fill("J18.9")
    await page.get_by_label("ยอดเรียกเก็บ (บาท)").fill(amount)


async def submit(page: Page) -> None:
    await page.get_by_role("button", name="เข้ารหัสและส่ง").click()


async def test_password_sign_in_and_a_thai_page(page: Page, hospital_portal: RunningPortal) -> None:
    await page.goto(hospital_portal.url + "/claims")
    await expect(page).to_have_url(re.compile(r"/signin\?next=/claims$"))
    assert await page.locator("html").get_attribute("lang") == "th"
    await sign_in(page, hospital_portal)
    await page.get_by_role("link", name="English").click()
    await expect(page.get_by_role("heading", name="Claims", exact=True)).to_be_visible()
    await page.get_by_role("link", name="ภาษาไทย").click()
    await expect(page.get_by_role("heading", name="เคลม", exact=True)).to_be_visible()


async def test_review_claim_is_pending_then_approved_without_a_reload(
    page: Page, hospital_portal: RunningPortal
) -> None:
    await sign_in(page, hospital_portal)
    await fill_claim(page, hospital_portal, "REVIEW-1", "12500")
    await submit(page)
    await expect(page).to_have_url(re.compile(r"/claims/txn_"))
    await page.evaluate("window.__same_page = true")
    status = page.locator("#claim-status")
    await expect(page.locator("#claim-state")).to_have_text("รอพิจารณา", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติ", timeout=LIVE_TIMEOUT_MS)
    assert await page.evaluate("window.__same_page === true")  # live, not reloaded
    await expect(page.locator("#claim-approved")).to_have_text("฿12,500.00")
    await expect(status).to_contain_text("หนึ่งหมื่นสองพันห้าร้อยบาทถ้วน")
    buddhist_year = str(dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=7))).year + 543)
    await expect(status.locator("time").first).to_contain_text(buddhist_year)
    await expect(status.get_by_text("รอพิจารณา")).to_have_count(1)  # the timeline kept it
    await expect(page.get_by_role("heading", name="ผลการพิจารณา (ถอดรหัสแล้ว)")).to_be_visible()


async def test_denied_claim_shows_its_reason(page: Page, hospital_portal: RunningPortal) -> None:
    await sign_in(page, hospital_portal)
    await fill_claim(page, hospital_portal, "DENY-5", "500")
    await submit(page)
    await expect(page.locator("#claim-state")).to_have_text("ปฏิเสธ", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#claim-reason")).to_have_text("POLICY_NOT_FOUND")


async def test_limit_claim_is_partially_approved(page: Page, hospital_portal: RunningPortal) -> None:
    await sign_in(page, hospital_portal)
    await fill_claim(page, hospital_portal, "LIMIT-30000-1", "800.00")
    await submit(page)
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติบางส่วน", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#claim-approved")).to_have_text("฿300.00")


async def test_bad_input_gets_a_message_and_submits_nothing(
    page: Page, hospital_portal: RunningPortal
) -> None:
    await sign_in(page, hospital_portal)
    await page.goto(hospital_portal.url + "/claims")
    before = await page.locator("tbody tr").count()
    await fill_claim(page, hospital_portal, "POL-1", "-100")
    await submit(page)
    await expect(page.get_by_role("alert")).to_have_text("กรุณากรอกจำนวนเงินเป็นบาท เช่น 12500.00 (ห้ามติดลบ)")
    await fill_claim(page, hospital_portal, "POL-1", "100")
    await page.get_by_label("การวินิจฉัย (ICD-10)").fill("")
    await submit(page)
    await expect(page.get_by_role("alert")).to_have_text("กรุณากรอกรหัสวินิจฉัย ICD-10 อย่างน้อยหนึ่งรหัส")
    await page.goto(hospital_portal.url + "/claims")
    assert await page.locator("tbody tr").count() == before


async def test_a_form_without_its_csrf_token_is_refused(page: Page, hospital_portal: RunningPortal) -> None:
    await sign_in(page, hospital_portal)
    before = await page.locator("tbody tr").count()
    await fill_claim(page, hospital_portal, "POL-CSRF", "100")
    await page.locator('form[action="/claims"] input[name="csrf_token"]').evaluate("e => e.remove()")
    # htmx's header is not on a plain form post: only the (removed) field could carry it
    async with page.expect_response(re.compile(r"/claims$")) as answer:
        await submit(page)
    assert (await answer.value).status == 403
    await expect(page.locator("body")).to_contain_text("did not come from this portal")
    await page.goto(hospital_portal.url + "/claims")
    assert await page.locator("tbody tr").count() == before


async def with_a_passkey_signed_out(context: BrowserContext, page: Page, portal: RunningPortal) -> None:
    """Chromium's virtual authenticator holds a passkey of the admin's; the page
    is the sign-in form."""
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    await sign_in(page, portal)
    await page.goto(portal.url + "/passkeys")
    # The portal lives for the session: an earlier test's passkey may be there already,
    # and a count of "1" could match the page from before the click.
    registered = int(await page.locator("#passkey-count").inner_text())
    await page.get_by_role("button", name="เพิ่มพาสคีย์").click()
    await expect(page.locator("#passkey-count")).to_have_text(str(registered + 1))
    await page.get_by_role("button", name="ออกจากระบบ").click()
    await expect(page).to_have_url(re.compile(r"/signin$"))


async def test_passkey_sign_in_through_the_virtual_authenticator(
    context: BrowserContext, page: Page, hospital_portal: RunningPortal
) -> None:
    await with_a_passkey_signed_out(context, page, hospital_portal)
    await page.get_by_role("button", name="เข้าสู่ระบบด้วยพาสคีย์").click()
    await expect(page.get_by_role("heading", name="เคลม", exact=True)).to_be_visible()


async def test_after_a_passkey_sign_in_the_script_opens_only_a_page_of_this_portal(
    context: BrowserContext, page: Page, hospital_portal: RunningPortal
) -> None:
    await with_a_passkey_signed_out(context, page, hospital_portal)
    await page.route("http://evil.example/**", lambda route: route.fulfill(body="evil"))
    # as if "/<TAB>/evil.example" got past the server (the URL parser drops the tab: //evil.example)
    await page.locator("#passkey-signin").evaluate("b => { b.dataset.next = '/\\t/evil.example/'; }")
    await page.get_by_role("button", name="เข้าสู่ระบบด้วยพาสคีย์").click()
    await expect(page.get_by_role("heading", name="เคลม", exact=True)).to_be_visible()
    assert page.url.startswith(hospital_portal.url + "/")


async def test_without_javascript_a_claim_is_submitted_and_its_decision_seen_by_refreshing(
    new_context: CreateContextCallback, hospital_portal: RunningPortal
) -> None:
    context = await new_context(java_script_enabled=False)  # Thai, traced; closed by the fixture
    page = await context.new_page()
    await sign_in(page, hospital_portal)
    await fill_claim(page, hospital_portal, "NOJS-1", "321")
    await submit(page)
    await expect(page).to_have_url(re.compile(r"/claims/txn_"))
    for _ in range(60):
        if await page.locator("#claim-state").inner_text() == "อนุมัติ":
            break
        await page.get_by_role("link", name="โหลดใหม่").click()
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติ")
    await expect(page.locator("#claim-approved")).to_have_text("฿321.00")


async def test_fhir_upload_is_submitted_and_a_file_that_is_not_a_claim_is_refused(
    page: Page, hospital_portal: RunningPortal, tmp_path: Path
) -> None:
    code = hospital_portal.config.credentials.code
    claim_ref = f"UP-{secrets.token_hex(4)}"
    good = tmp_path / "claim.json"
    good.write_bytes(synthetic_claim(code, INSURER, claim_ref, "POL-UP-1", 4_200_00))
    not_a_claim = tmp_path / "patient.json"
    not_a_claim.write_text(json.dumps({"resourceType": "Patient", "id": "x"}))

    await sign_in(page, hospital_portal)
    await page.goto(hospital_portal.url + "/claims/new")
    await page.get_by_label("ไฟล์ FHIR Claim").set_input_files(str(not_a_claim))
    await submit(page)
    await expect(page.get_by_role("alert")).to_have_text("ไฟล์ไม่ใช่ FHIR Claim (JSON) ที่ถูกต้อง")

    await page.get_by_label("ไฟล์ FHIR Claim").set_input_files(str(good))
    await submit(page)
    await expect(page.get_by_role("heading", name=f"เคลม {claim_ref}")).to_be_visible()
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติ", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#claim-approved")).to_have_text("฿4,200.00")


async def test_a_ten_megabyte_upload_gets_a_clear_message(
    page: Page, hospital_portal: RunningPortal, tmp_path: Path
) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (10 * 1024 * 1024))
    await sign_in(page, hospital_portal)
    await page.goto(hospital_portal.url + "/claims/new")
    await page.get_by_label("ไฟล์ FHIR Claim").set_input_files(str(big))
    await submit(page)
    await expect(page.locator("body")).to_contain_text("too large")


async def test_cancel_before_the_decision_and_the_filter_finds_it(
    page: Page, hospital_portal: RunningPortal
) -> None:
    await sign_in(page, hospital_portal)
    await fill_claim(page, hospital_portal, "SLOW-1", "777")  # decided only after ~10 s
    claim_ref = await page.get_by_label("เลขอ้างอิงเคลม").input_value()
    await submit(page)
    await page.get_by_role("button", name="ยกเลิกเคลมนี้").click()
    await expect(page.locator("#claim-state")).to_have_text("ยกเลิกแล้ว")
    await expect(page.get_by_role("button", name="ยกเลิกเคลมนี้")).to_have_count(0)

    await page.goto(hospital_portal.url + "/claims")
    await page.get_by_label("สถานะ").select_option("CANCELLED")
    await page.get_by_role("button", name="กรอง").click()
    rows = page.locator("tbody tr")
    await expect(rows.filter(has_text=claim_ref)).to_have_count(1)
    for state in await rows.locator("td:nth-child(4)").all_inner_texts():
        assert state.strip() == "ยกเลิกแล้ว"


async def test_an_invoice_voided_frees_its_claims(page: Page, hospital_portal: RunningPortal) -> None:
    await sign_in(page, hospital_portal)
    await fill_claim(page, hospital_portal, "POL-VOID-1", "55")
    claim_ref = await page.get_by_label("เลขอ้างอิงเคลม").input_value()
    await submit(page)
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติ", timeout=LIVE_TIMEOUT_MS)

    await page.goto(f"{hospital_portal.url}/invoices?counterparty={INSURER}")
    claim_box = page.get_by_label(re.compile(re.escape(claim_ref)))
    for box in await page.get_by_role("checkbox").all():
        await box.set_checked(False)
    await claim_box.check()
    before = set(await invoice_refs(page))
    await page.get_by_role("button", name="สร้างใบแจ้งหนี้").click()
    await expect(page.get_by_label(re.compile(re.escape(claim_ref)))).to_have_count(0)  # invoiced now
    invoice_ref = await new_invoice_ref(page, before)
    await page.get_by_role("button", name=f"ยกเลิกใบแจ้งหนี้ {invoice_ref}").click()
    await expect(page.get_by_role("table", name=re.compile("ใบแจ้งหนี้"))).to_contain_text("ยกเลิกแล้ว")
    await expect(page.get_by_label(re.compile(re.escape(claim_ref)))).to_have_count(
        1
    )  # may be invoiced again


async def hub_state_changes(stack: RunningStack, tid: str, last: str) -> list[tuple[str, str]]:
    """The claim's state changes in the hub's audit log (internal service), as
    (state, ISO time), once `last` is among them."""
    changes: list[tuple[str, str]] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.stack.ports.audit}") as ch:
        stub = audit_log_pb2_grpc.AuditLogServiceStub(ch)
        for _ in range(300):
            resp = await stub.ListEntriesByTransaction(
                audit_log_pb2.ListEntriesByTransactionRequest(transaction_id=tid), timeout=5
            )
            events = sorted(
                (
                    e.event
                    for e in resp.entries
                    if e.event.kind == audit_log_pb2.AUDIT_EVENT_KIND_CLAIM_STATE_CHANGE
                ),
                key=lambda e: e.occurred_at.ToNanoseconds(),
            )
            changes = [
                (
                    e.outcome_reason.removeprefix("CLAIM_STATE_"),
                    e.occurred_at.ToDatetime(tzinfo=dt.UTC).isoformat(),
                )
                for e in events
            ]
            if last in {state for state, _ in changes}:
                return changes
            await asyncio.sleep(0.1)
    raise AssertionError(f"{last} not in the audit log: {changes}")


async def test_a_claim_decided_while_its_page_was_closed_shows_the_hubs_timeline(
    page: Page, hospital_portal: RunningPortal, stack: RunningStack
) -> None:
    await sign_in(page, hospital_portal)
    # AIA takes claims by gRPC push (RECEIVED, then DELIVERED once taken); SLOW- is decided ~10 s later
    await fill_claim(page, hospital_portal, "SLOW-TRAIL-1", "250")
    await submit(page)
    await expect(page).to_have_url(re.compile(r"/claims/txn_"))
    tid = page.url.rsplit("/", 1)[1]
    await page.goto(hospital_portal.url + "/claims")  # closed well before the decision
    await expect(page.get_by_role("heading", name="เคลม", exact=True)).to_be_visible()
    hub = await hub_state_changes(stack, tid, last="APPROVED")
    assert [state for state, _ in hub] == ["RECEIVED", "DELIVERED", "APPROVED"]

    await page.goto(f"{hospital_portal.url}/claims/{tid}")
    await expect(page.locator("#claim-state")).to_have_text("อนุมัติ")
    steps = page.locator("#timeline li")
    await expect(steps).to_have_count(3)
    shown = [
        (await li.get_attribute("data-state"), await li.locator("time").get_attribute("datetime"))
        for li in await steps.all()
    ]
    assert shown == hub  # every state, at the hub's time (not when this portal saw it)
    await expect(steps.locator("span")).to_have_text(["รับเรื่องแล้ว", "ส่งถึงบริษัทประกันแล้ว", "อนุมัติ"])
    decided = page.locator("#claim-status p time")  # the claim's own decided_at agrees
    assert await decided.get_attribute("datetime") == hub[-1][1]
    buddhist_year = str(
        dt.datetime.fromisoformat(hub[0][1]).astimezone(dt.timezone(dt.timedelta(hours=7))).year + 543
    )
    await expect(steps.locator("time").first).to_contain_text(buddhist_year)
    await expect(page.locator("#timeline-note")).to_have_count(0)  # the trail was read
