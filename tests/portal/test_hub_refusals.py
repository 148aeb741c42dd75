"""What a served portal makes of the clearinghouse's refusals (fakes in place of
the SDK clients, refusing as the hub does): a form error, a 404 or a 400 page,
never an internal error; and an insurer's queue that learns of a claim the
hospital cancelled."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest

from iclaim.v1 import claim_service_pb2 as pb
from iclaim_portal import db
from iclaim_portal.insurer_queue import Queue, take
from tests.portal.conftest import csrf_of, sign_in
from tests.portal.fakes import FakeBilling, FakeHospital, FakeInsurer
from tests.portal.support import RunningPortal, running_portal
from tests.support.insurer_kit import Party, delivery, rpc_error, write_credentials

TID = "txn_" + "b" * 28
# What the hub answers a decision on a claim the hospital cancelled (§6).
CANCELLED_CONFLICT = rpc_error(
    grpc.StatusCode.FAILED_PRECONDITION, "DECISION_CONFLICT", state="CLAIM_STATE_CANCELLED"
)
PULL = "TESTINS"


@pytest.fixture
async def hospital(portal: RunningPortal, browser_like: httpx.AsyncClient) -> FakeHospital:
    """The hospital portal on fakes, its admin signed in (`browser_like`)."""
    fake = FakeHospital({TID: pb.Claim(transaction_id=TID, claim_ref="P-1", state=pb.CLAIM_STATE_APPROVED)})
    served = portal.portal
    served.hospital, served.billing = fake, FakeBilling(hospital_side=True)  # type: ignore[assignment]
    served.timeline.trail = None  # the hub's audit trail: not here
    assert (await sign_in(browser_like, portal.password)).status_code == 303
    return fake


def billing(portal: RunningPortal) -> FakeBilling:
    fake: FakeBilling = portal.portal.billing  # type: ignore[assignment]
    return fake


async def test_a_buddhist_era_period_is_read_as_its_common_era_dates(
    portal: RunningPortal, browser_like: httpx.AsyncClient, hospital: FakeHospital
) -> None:
    resp = await browser_like.get("/statement?counterparty=AIA&start=2569-01-01&end=2569-01-31")
    assert resp.status_code == 200, resp.text
    assert billing(portal).statements == [("AIA", date(2026, 1, 1), date(2026, 1, 31))]
    assert 'value="2026-01-01"' in resp.text


async def test_a_period_the_clearinghouse_would_refuse_is_a_form_error(
    portal: RunningPortal, browser_like: httpx.AsyncClient, hospital: FakeHospital
) -> None:
    resp = await browser_like.get("/statement?counterparty=AIA&start=1999-12-01&end=1999-12-31")
    assert resp.status_code == 422
    assert 'role="alert"' in resp.text and "2543" in resp.text  # Thai by default: B.E. years
    assert billing(portal).statements == []


async def test_a_counterparty_code_the_clearinghouse_would_refuse_is_no_choice(
    portal: RunningPortal, browser_like: httpx.AsyncClient, hospital: FakeHospital
) -> None:
    for code in ("abc", "A", "AIA-1", "X" * 17):
        resp = await browser_like.get(f"/statement?counterparty={code}")
        assert resp.status_code == 200, (code, resp.status_code)
        assert (await browser_like.get(f"/invoices?counterparty={code}")).status_code == 200
    assert billing(portal).statements == []
    assert (await browser_like.get("/statement?counterparty=AIA")).status_code == 200
    assert [s[0] for s in billing(portal).statements] == ["AIA"]


async def test_cancelling_a_claim_the_clearinghouse_does_not_know_is_a_404(
    browser_like: httpx.AsyncClient, hospital: FakeHospital
) -> None:
    token = await csrf_of(browser_like, "/claims")
    missing = await browser_like.post("/claims/txn_unknown/cancel", data={"csrf_token": token})
    assert missing.status_code == 404
    # a refused cancel (already decided) still shows the claim with the reason
    refused = await browser_like.post(f"/claims/{TID}/cancel", data={"csrf_token": token})
    assert refused.status_code == 409
    assert "CLAIM_NOT_CANCELLABLE" in refused.text


async def test_an_unhandled_invalid_argument_is_a_400_page(
    portal: RunningPortal, browser_like: httpx.AsyncClient, hospital: FakeHospital
) -> None:
    billing(portal).list_error = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    resp = await browser_like.get("/invoices?counterparty=AIA")
    assert resp.status_code == 400
    assert "<code>INVALID_PAGE_TOKEN</code>" in resp.text


async def test_a_claim_page_is_not_kept_in_any_cache_but_static_files_may_be(
    browser_like: httpx.AsyncClient, hospital: FakeHospital
) -> None:
    page = await browser_like.get(f"/claims/{TID}")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert (await browser_like.get("/signin")).headers["cache-control"] == "no-store"
    static = await browser_like.get("/static/portal.css")
    assert static.status_code == 200 and "no-store" not in static.headers.get("cache-control", "")


# --- an insurer's portal ---------------------------------------------------------


@pytest.fixture
async def insurer(
    tmp_path: Path, make_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[tuple[RunningPortal, Party, FakeInsurer]]:
    """An insurer portal (its puller finds no gateway and waits) with a fake
    gateway for the pages, and the party that seals claims to it."""
    path, parties = write_credentials(tmp_path, [PULL], None, pull=(PULL,))
    async with running_portal(path, PULL, await make_database()) as running:
        fake = FakeInsurer(creds=running.portal.config.credentials)
        running.portal.insurer = fake  # type: ignore[assignment]
        running.portal.billing = FakeBilling(hospital_side=False)  # type: ignore[assignment]
        yield running, parties[PULL], fake


async def test_paying_an_invoice_the_clearinghouse_does_not_know_is_a_404(
    insurer: tuple[RunningPortal, Party, FakeInsurer],
) -> None:
    running, _, _ = insurer
    async with httpx.AsyncClient(base_url=running.url, headers={"Origin": running.url}) as client:
        await sign_in(client, running.password)
        assert (await client.get("/invoices/inv_unknown/pay")).status_code == 404
        token = await csrf_of(client, "/queue")
        paid = await client.post("/invoices/inv_unknown/pay", data={"csrf_token": token, "trace_no": "T-1"})
        assert paid.status_code == 404


async def test_a_decision_on_a_claim_the_hospital_cancelled_closes_it_in_the_queue(
    insurer: tuple[RunningPortal, Party, FakeInsurer],
) -> None:
    running, party, fake = insurer
    claim = delivery(party)
    queue = Queue(running.portal.pool)
    await queue.keep(claim)
    fake.errors = [CANCELLED_CONFLICT]
    async with httpx.AsyncClient(base_url=running.url, headers={"Origin": running.url}) as client:
        await sign_in(client, running.password)
        review = await client.get(f"/queue/{claim.transaction_id}")
        assert review.status_code == 200
        assert review.headers["cache-control"] == "no-store"  # the opened claim: no cache keeps it
        token = await csrf_of(client, f"/queue/{claim.transaction_id}")
        decided = await client.post(
            f"/queue/{claim.transaction_id}/decide", data={"outcome": "approve", "csrf_token": token}
        )
        assert decided.status_code == 409
        assert 'id="cancelled"' in decided.text and "โรงพยาบาลยกเลิกเคลมนี้แล้ว" in decided.text
        assert await queue.open_items() == []
        [closed] = await queue.decided_items()
        assert (closed["transaction_id"], closed["state"]) == (claim.transaction_id, "CANCELLED")
        assert 'id="cancelled"' in (await client.get(f"/queue/{claim.transaction_id}")).text


@pytest.fixture
async def pool(make_database: Callable[[], Awaitable[str]]) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.connect(await make_database())
    yield pool
    await pool.close()


async def test_the_puller_closes_a_claim_cancelled_before_it_could_mark_it(
    tmp_path: Path, pool: asyncpg.Pool
) -> None:
    _, parties = write_credentials(tmp_path, [PULL], None, pull=(PULL,))
    party = parties[PULL]
    fake = FakeInsurer(creds=party.creds)
    fake.errors = [CANCELLED_CONFLICT]
    queue = Queue(pool)
    claim = delivery(party)
    await take(fake, party.creds, queue, claim)  # type: ignore[arg-type]
    assert await queue.open_items() == []
    assert [r["state"] for r in await queue.decided_items()] == ["CANCELLED"]
    # any other refusal, a conflict with a decision among them, is the puller's to retry: the claim stays
    for error in (
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "WRONG_STATE"),
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "DECISION_CONFLICT", state="CLAIM_STATE_APPROVED"),
    ):
        fake.errors = [error]
        other = delivery(party)
        with pytest.raises(grpc.aio.AioRpcError):
            await take(fake, party.creds, queue, other)  # type: ignore[arg-type]
        assert other.transaction_id in [r["transaction_id"] for r in await queue.open_items()]
